"""Fixed after review; what went wrong before: a leader whose separate
roster join got lost (the answer lost after Consul applied it) took its
lock without its entry marked ``led``, and a fresh candidate, after the key
was deleted, saw nobody who led and started its job beside the leader's.
Every lock is now taken in one transaction with its holder's entry."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, List, Tuple

import pytest
import requests
from garbling_proxy import FailingProxy
from security_helpers import acl_agent

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: How long the old leader's job takes to return once told to stop: well
#: within its margin (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 2.0


class Intervals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: List[Tuple[str, float, float]] = []
        self.started: dict = {}

    def job(self, name: str, wind_down: float) -> Callable[[threading.Event], None]:
        def job(stop_event: threading.Event) -> None:
            start = time.monotonic()
            with self.lock:
                self.started.setdefault(name, start)
            stop_event.wait()
            time.sleep(wind_down)
            with self.lock:
                self.spans.append((name, start, time.monotonic()))
        return job

    def overlap(self) -> float:
        """The longest time a job of "old" and one of "new" worked together."""
        worst = 0.0
        for a, a0, a1 in self.spans:
            for b, b0, b1 in self.spans:
                if (a, b) == ("old", "new"):
                    worst = max(worst, min(a1, b1) - max(a0, b0))
        return round(worst, 3)


def _scenario(address: str, key: str, wipe: Callable[[], None], delete_key: Callable[[], None],
              old_kwargs: dict, new_kwargs: dict) -> Tuple[float, float]:
    jobs = Intervals()
    old = Candidate(key, identity="old", address=address, ttl=3, lock_delay=10, **old_kwargs)
    new = Candidate(key, identity="new", address=address, ttl=3, **new_kwargs)
    try:
        old.run(jobs.job("old", WIND_DOWN), block=False)
        assert old.wait_for_leadership(30)
        wait_until(lambda: "old" in jobs.started, what="the old leader's job")
        wipe()
        time.sleep(0.5)
        deleted_at = time.monotonic()
        delete_key()
        new.run(jobs.job("new", 0.0), block=False)
        wait_until(lambda: "new" in jobs.started, timeout=60, what="the new leader's job")
        started_after = jobs.started["new"] - deleted_at
        wait_until(lambda: any(name == "old" for name, _, _ in jobs.spans), timeout=30, what="the old job to return")
    finally:
        new.stop()
        old.stop()
    return round(started_after, 3), jobs.overlap()


@pytest.fixture(scope="module")
def secured() -> Iterator[ConsulAgent]:
    with acl_agent() as agent:
        yield agent


def test_a_leader_whose_roster_join_answer_was_lost_is_overlapped_by_a_fresh_candidate_after_its_key_is_deleted(
        consul_agent: ConsulAgent, key: str) -> None:
    """No operator, no ACL: the answer to the leader's roster join is lost
    (Consul wrote the entry; a proxy, or a timeout behind a slow agent,
    lost the answer). ``Roster.join`` returns False, the same round's
    acquisition goes on without the entry (``with_lock()`` is empty), and
    the leader leads with an entry that is alive but says ``led: false``
    for its whole term: the fresh candidate's roster proves "nobody else"."""
    url = consul_agent.url
    with FailingProxy(url) as proxy:
        proxy.fail_once(lambda method, path, body: "after" if method == "PUT" and
                        "/v1/kv/consul-leader/participants/" in path and "acquire=" in path else None)
        started_after, overlap = _scenario(
            proxy.address, key, wipe=lambda: None,
            delete_key=lambda: requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status(),
            old_kwargs={}, new_kwargs={})
        assert proxy.failed, "the roster join went through: the scene did not happen"
    print(f"lost join: new job started {started_after}s after the deletion; overlap {overlap}s")
    assert overlap == 0.0, f"the jobs overlapped {overlap}s (new job {started_after}s after the key's deletion)"
