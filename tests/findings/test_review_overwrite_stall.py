"""Review: a key overwritten under its leader costs a whole lock-delay with
nobody leading.

On Consul 1.8.7 a plain write (``consul kv put KEY VALUE``, no
``-acquire``) of a locked key keeps its ``Session`` but resets its
``LockIndex`` to 0 (and its flags to 0). The leader is deposed ("key
overwritten"), stops its job and releases the key itself: its release
mark proves its work is over. But the next lock, its own (F3) or a
waiter's, answers ``LockIndex`` 1, which ``LockAttempt.follows`` never
accepts ("as its first holder"), so it is held a lock-delay before anyone
leads. Issue 18 asks for the next leader within 1 s after an involuntary
end that the holder's own release closes."""

from __future__ import annotations

import time
from typing import List

import pytest
import requests

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import wait_until


@pytest.mark.parametrize("waiter", [False, True], ids=["alone", "with-a-waiter"])
def test_after_the_key_is_overwritten_under_its_leader_someone_leads_within_a_second(
        consul_agent: ConsulAgent, key: str, waiter: bool) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    a = Candidate(key, identity="a", address=consul_agent.address)
    b = Candidate(key, identity="b", address=consul_agent.address)
    owners: List[Candidate] = [a] + ([b] if waiter else [])
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
        wait_until(lambda: not any(o.is_leader() for o in owners), timeout=10, what="a to be deposed")
        wait_until(lambda: any(o.is_leader() for o in owners), timeout=30, what="someone to lead again")
        took = time.monotonic() - written
    finally:
        for owner in owners:
            owner.stop()
    print(f"LockIndex {before['LockIndex']} before the write, {after[0]['LockIndex'] if after else None} after; "
          f"led again {took:.2f}s after the write")
    assert took < 1.0, f"nobody led for {took:.2f}s after the key was overwritten (lock-delay {a.timing.lock_delay}s)"


def test_after_a_key_of_an_elector_is_overwritten_under_it_it_leads_again_within_a_second(
        consul_agent: ConsulAgent, key: str) -> None:
    prefix, name = key.rsplit("/", 1)
    url = f"{consul_agent.url}/v1/kv/{key}"
    elector = Elector(prefix, identity="e", address=consul_agent.address)
    try:
        candidacy = elector.candidate(name)
        elector.start()
        assert candidacy.wait_for_leadership(30)
        requests.put(url, data=b"someone's value", timeout=5).raise_for_status()
        written = time.monotonic()
        wait_until(lambda: not candidacy.is_leader(), timeout=10, what="the elector to be deposed")
        wait_until(candidacy.is_leader, timeout=30, what="the elector to lead again")
        took = time.monotonic() - written
    finally:
        elector.stop()
    print(f"the elector led again {took:.2f}s after the write")
    assert took < 1.0, f"nobody led for {took:.2f}s after the key was overwritten"
