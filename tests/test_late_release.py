"""A holder's own release that lands late must not release its *next* term.

A release (the ``unlock`` transaction) that the client gave up on (its
request timed out) may still be applied later: a request queued in a busy
agent, or held by Consul's RPC hold during a Raft election (up to 7 s,
longer than the client's timeout). The candidate sends its release again,
that one lands, and after an involuntary end (here: the key overwritten)
it takes the key back at once with the same session (F3). When the first
release lands then, it releases the new term's lock and writes the very
release mark the holder writes: the waiter takes it for the holder's own
clean release and leads at once, while the holder's job still runs.

The late request is played by a proxy between the holder and its agent
that holds the first release back until the next term has begun."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

import pytest
import requests
from garbling_proxy import Answer, ConsulProxy, HoldingProxy
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def the_late_release_lands(a: Any, b: Candidate, jobs: Jobs, proxy: Any) -> None:
    """b runs for the key a leads again; then a's first release, held back
    until now, lands. Guarded by its term's fencing token, it frees nothing:
    a leads on and b's job does not start."""
    b.run(jobs.job("b"), block=False)
    wait_until(lambda: b.leader() == "a", what="b to see a lead")
    time.sleep(0.5)
    proxy.let_go()
    time.sleep(2)
    assert a.is_leader() and jobs.running == ["a"], (a.is_leader(), jobs.running)


def unlock_of(key: str) -> Any:
    def pick(method: str, path: str, body: bytes) -> bool:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return False
        return any(op.get("KV", {}).get("Verb") == "unlock" and op["KV"].get("Key") == key
                   for op in json.loads(body or b"[]"))
    return pick


def test_a_release_that_lands_after_the_holder_took_the_key_back_does_not_start_a_second_job(
        consul_agent: ConsulAgent, key: str) -> None:
    jobs = Jobs()
    url = f"{consul_agent.url}/v1/kv/{key}"
    with HoldingProxy(consul_agent.url) as proxy:
        proxy.hold = unlock_of(key)
        a = Candidate(key, identity="a", address=proxy.address, timeout=1.0)
        b = Candidate(key, identity="b", address=consul_agent.address)
        try:
            a.run(jobs.job("a"), block=False)
            assert a.wait_for_leadership(30)
            first = requests.get(url, timeout=5).json()[0]["ModifyIndex"]
            # Someone writes the key: a's term ends (key overwritten), its job
            # stops, its release is sent; the first one is held (times out
            # after 1 s), the second lands, and a takes the key back.
            requests.put(url, data=b"oops", timeout=5).raise_for_status()
            assert proxy.held.wait(10), "a's release was not sent"
            wait_until(lambda: a.is_leader() and jobs.running == ["a"] and
                       requests.get(url, timeout=5).json()[0]["ModifyIndex"] != first,
                       timeout=30, what="a's next term")
            the_late_release_lands(a, b, jobs, proxy)
        finally:
            proxy.let_go()
            b.stop()
            a.stop()
    print("intervals:", [(n, round(s, 3), round(e, 3)) for n, s, e in sorted(jobs.intervals, key=lambda i: i[1])])
    assert jobs.overlaps() == []



class LateReleaseProxy(ConsulProxy):
    """Between a participant and its agent: once :meth:`arm` is called,
    every request but the first release of *key* fails with ``500 No
    cluster leader`` for *window* seconds from the next check pass (so the
    lease runs out while the check and the session live on); that release
    is held back until :meth:`let_go`, long after its sender gave up on it."""

    def __init__(self, upstream: str, key: str, window: float) -> None:
        super().__init__(upstream)
        self.key = key
        self.window = window
        self.armed = threading.Event()
        self.failing_from: Optional[float] = None
        self.held = threading.Event()
        self._go = threading.Event()

    def arm(self) -> None:
        self.armed.set()

    def let_go(self) -> None:
        self._go.set()

    def _is_release(self, method: str, path: str, body: bytes) -> bool:
        return release_of(self.key)(method, path, body) or unlock_of(self.key)(method, path, body)

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if not self.held.is_set() and self.failing_from is not None and self._is_release(method, path, body):
            self.held.set()
            self._go.wait(120)
            return None
        if self.armed.is_set() and self.failing_from is None and path.startswith("/v1/agent/check/pass/"):
            self.failing_from = time.monotonic()
            return None
        if self.failing_from is not None and time.monotonic() < self.failing_from + self.window:
            return Answer(500, b"No cluster leader", "text/plain")
        return None


@pytest.mark.parametrize("kind", ["candidate", "elector"])
def test_a_release_after_a_lapsed_lease_that_lands_late_does_not_start_a_second_job(
        consul_agent: ConsulAgent, key: str, kind: str) -> None:
    # ttl 10 (check TTL 10s), lease 3s: the agent answers nothing but 500s
    # for 5s, so the lease runs out and the term ends (lease expired) while
    # the check and the session live on; the release is held back past the
    # sender's 1s timeout; once the agent answers again, the participant
    # takes its key back and leads it (its session still holds it, or its
    # second release landed). Then the first release lands.
    from consul_leader import Elector

    jobs = Jobs()
    prefix, name = key.rsplit("/", 1)
    with LateReleaseProxy(consul_agent.url, key, window=5.0) as proxy:
        if kind == "candidate":
            owner: Any = Candidate(key, identity="a", address=proxy.address, ttl=10, lease=3, timeout=1.0)
            a = owner
        else:
            owner = Elector(prefix, identity="a", address=proxy.address, ttl=10, lease=3, timeout=1.0)
            a = owner.candidate(name)
        b = Candidate(key, identity="b", address=consul_agent.address)
        try:
            a.run(jobs.job("a"), block=False)
            assert a.wait_for_leadership(30)
            proxy.arm()
            assert proxy.held.wait(20), "a's release was not sent"
            wait_until(lambda: len(jobs.intervals) == 1 and jobs.running == ["a"], timeout=30,
                       what="a's next term")
            # b comes now (or was there and lost the race to a)
            the_late_release_lands(a, b, jobs, proxy)
        finally:
            proxy.let_go()
            b.stop()
            owner.stop()
    print("intervals:", [(n, round(s, 3), round(e, 3)) for n, s, e in sorted(jobs.intervals, key=lambda i: i[1])])
    assert jobs.overlaps() == []


def release_of(key: str) -> Any:
    """Picks an Elector's release of *key* (a plain ``?release=``)."""
    def pick(method: str, path: str, body: bytes) -> bool:
        return method == "PUT" and path.startswith(f"/v1/kv/{key}?") and "release=" in path
    return pick

