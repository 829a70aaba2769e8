"""A key overwritten under its leader (a plain ``consul kv put KEY VALUE``,
no ``-acquire``) is led again at once, not a lock-delay later.

On Consul 1.8.7 such a write keeps the key's ``Session`` but sets its
``LockIndex`` (and flags) to 0. The leader is deposed ("key overwritten"),
stops its job and releases the key with its own mark, which proves its work
over; the next lock answers ``LockIndex`` 1 and follows that release. Before,
a key's first lock never followed anything, and nobody led for a whole
lock-delay. The lock-delay is 10 s here, so that a hold cannot pass for a
slow machine."""

from __future__ import annotations

import time
from typing import Any, List

import pytest
import requests

from consul_leader import Candidate, Elector, deposed, elected
from consul_leader.testing import ConsulAgent

from conftest import wait_until


class Terms:
    """When each of *participants* was deposed and elected (signals, not
    polling: the next term may begin within milliseconds)."""

    def __init__(self, participants: List[Any]) -> None:
        self.deposed: List[float] = []
        self.elected: List[float] = []
        for participant in participants:
            deposed.connect(lambda sender, **kw: self.deposed.append(time.monotonic()), sender=participant,
                            weak=False)
            elected.connect(lambda sender, **kw: self.elected.append(time.monotonic()), sender=participant,
                            weak=False)

    def led_again_after(self, written: float) -> float:
        """Seconds from *written* until a term began after the first deposal."""
        wait_until(lambda: self.deposed, timeout=20, what="the leader to be deposed")
        wait_until(lambda: any(t > self.deposed[0] for t in self.elected), timeout=30, what="someone to lead again")
        return next(t for t in self.elected if t > self.deposed[0]) - written


@pytest.mark.parametrize("waiter", [False, True], ids=["alone", "with-a-waiter"])
def test_after_the_key_is_overwritten_under_its_leader_someone_leads_without_a_lock_delay(
        consul_agent: ConsulAgent, key: str, waiter: bool) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    a = Candidate(key, identity="a", address=consul_agent.address, ttl=10)
    b = Candidate(key, identity="b", address=consul_agent.address, ttl=10)
    owners: List[Candidate] = [a] + ([b] if waiter else [])
    terms = Terms(owners)
    try:
        a.start()
        assert a.wait_for_leadership(30)
        if waiter:
            b.start()
            wait_until(lambda: b.leader() == "a", what="b to see a lead")
            time.sleep(0.3)
        before = requests.get(url, timeout=5).json()[0]
        requests.put(url, data=b"someone's value", timeout=5).raise_for_status()
        written = time.monotonic()
        after = requests.get(url, timeout=5).json()
        took = terms.led_again_after(written)
    finally:
        for owner in owners:
            owner.stop()
    print(f"LockIndex {before['LockIndex']} before the write, {after[0]['LockIndex'] if after else None} after; "
          f"led again {took:.2f}s after the write")
    assert took < a.timing.lock_delay / 2, \
        f"nobody led for {took:.2f}s after the key was overwritten (lock-delay {a.timing.lock_delay}s)"


def test_after_a_key_of_an_elector_is_overwritten_under_it_it_leads_again_without_a_lock_delay(
        consul_agent: ConsulAgent, key: str) -> None:
    prefix, name = key.rsplit("/", 1)
    url = f"{consul_agent.url}/v1/kv/{key}"
    elector = Elector(prefix, identity="e", address=consul_agent.address, ttl=10)
    try:
        candidacy = elector.candidate(name)
        terms = Terms([candidacy])
        elector.start()
        assert candidacy.wait_for_leadership(30)
        requests.put(url, data=b"someone's value", timeout=5).raise_for_status()
        written = time.monotonic()
        took = terms.led_again_after(written)
    finally:
        elector.stop()
    print(f"the elector led again {took:.2f}s after the write")
    assert took < elector.timing.lock_delay / 2, f"nobody led for {took:.2f}s after the key was overwritten"
