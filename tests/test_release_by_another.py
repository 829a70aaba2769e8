"""A release the holder did not make: anyone who may write the key can
release it for the leader's session (``?release=<session>``, ``consul kv
put -release``). Consul sets no lock-delay for it, and the leader learns of
it only from its watch; the next holder must not take it for the leader's
own clean release, and waits a lock-delay before its work starts."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Tuple

import pytest
import requests

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: How long the deposed leader's job takes to return once told to stop:
#: well within the margin a lease leaves (``lock_delay - lease``).
JOB_WINDS_DOWN = 0.2


class Jobs:
    """Every job's working interval, on one clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intervals: List[Tuple[str, float, float]] = []
        self.running: List[str] = []

    def job(self, name: str) -> Any:
        def job(stop_event: threading.Event) -> None:
            start = time.monotonic()
            with self.lock:
                self.running.append(name)
            stop_event.wait()
            time.sleep(JOB_WINDS_DOWN)
            with self.lock:
                self.running.remove(name)
                self.intervals.append((name, start, time.monotonic()))
        return job

    def overlaps(self) -> List[Tuple[str, str, float]]:
        found = []
        for i, (a, a0, a1) in enumerate(self.intervals):
            for b, b0, b1 in self.intervals[i + 1:]:
                if a0 < b1 and b0 < a1:
                    found.append((a, b, min(a1, b1) - max(a0, b0)))
        return found


def holder_session(agent: ConsulAgent, key: str) -> str:
    entry = requests.get(f"{agent.url}/v1/kv/{key}", timeout=5).json()[0]
    return str(entry["Session"])


def participants(kind: str, key: str, agent: ConsulAgent) -> Tuple[Any, Any, List[Any]]:
    if kind == "candidate":
        a = Candidate(key, identity="a", address=agent.address)
        b = Candidate(key, identity="b", address=agent.address)
        return a, b, [a, b]
    prefix, name = key.rsplit("/", 1)
    ea = Elector(prefix, identity="a", address=agent.address)
    eb = Elector(prefix, identity="b", address=agent.address)
    return ea.candidate(name), eb.candidate(name), [ea, eb]


@pytest.mark.parametrize("kind", ["candidate", "elector"])
def test_a_release_of_the_leaders_session_by_someone_else_does_not_start_a_second_job_beside_its_job(
        consul_agent: ConsulAgent, key: str, kind: str) -> None:
    jobs = Jobs()
    a, b, owners = participants(kind, key, consul_agent)
    try:
        a.run(jobs.job("a"), block=False)
        assert a.wait_for_leadership(30)
        b.run(jobs.job("b"), block=False)
        time.sleep(0.5)  # b waits for the key
        session = holder_session(consul_agent, key)
        requests.put(f"{consul_agent.url}/v1/kv/{key}?release={session}", timeout=5).raise_for_status()
        wait_until(lambda: b.is_leader() or a.is_leader(), timeout=30, what="a leader again")
        wait_until(lambda: jobs.running, timeout=10, what="the next term's job")
    finally:
        for owner in owners:
            owner.stop()
    assert jobs.overlaps() == []
