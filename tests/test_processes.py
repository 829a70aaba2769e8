"""Leader election across real processes, each a candidate of its own
(tests/chaos/candidate_proc.py) against the real agent, recording what it
believed; the faults are real signals: SIGKILL, SIGSTOP/SIGCONT."""

from __future__ import annotations

import signal
from typing import Any, Dict, Iterator, List, Optional

import pytest
from chaos.checker import check, lease_violations, overlaps, terms
from chaos.procs import CandidateProcess, candidate_processes, wait_until

from consul_leader.testing import ConsulAgent

TTL = 1.0  # keeps the faults short: lock-delay 1 s, lease 5/6 s


@pytest.fixture
def spawn(consul_agent: ConsulAgent, key: str) -> Iterator[Any]:
    with candidate_processes(consul_agent.address, key, TTL) as start:
        count = iter(range(1000))

        def make(n: int) -> List[CandidateProcess]:
            return [start(f"p{next(count)}") for _ in range(n)]

        yield make


def the_leader(procs: List[CandidateProcess], after: float = float("-inf")) -> Optional[CandidateProcess]:
    found = [p for p in procs if (up := p.leading()) is not None and up["t"] > after]
    return found[0] if len(found) == 1 else None


def all_records(procs: List[CandidateProcess]) -> List[Dict[str, Any]]:
    return [r for p in procs for r in p.records()]


def lease_of(p: CandidateProcess) -> float:
    return next(r["lease"] for r in p.records() if r["ev"] == "start")


def test_one_leader_among_three_processes_and_every_process_names_it(spawn: Any) -> None:
    procs = spawn(3)
    leader = wait_until(lambda: the_leader(procs), 30, "one process leads")

    def views_agree() -> bool:
        views = [[r["leader"] for r in p.records() if r["ev"] == "view"] for p in procs]
        return all(v and v[-1] == leader.identity for v in views)

    wait_until(views_agree, 30, f"every process reports leader() == {leader.identity}")
    assert [p for p in procs if p.leading() is not None] == [leader]
    assert overlaps(terms(all_records(procs))) == []


def test_sigkill_of_the_leader_process_hands_over_within_ttl_plus_lock_delay(spawn: Any,
                                                                              record_property: Any) -> None:
    procs = spawn(3)
    old = wait_until(lambda: the_leader(procs), 30, "one process leads")
    killed_at = old.kill()
    others = [p for p in procs if p is not old]
    # The check's TTL, then the lock-delay, plus a generous margin for a
    # loaded machine.
    new = wait_until(lambda: the_leader(others, after=killed_at), TTL + TTL + 15, "another process leads")
    failover = new.leading()["t"] - killed_at  # type: ignore[index]
    record_property("sigkill_failover_s", round(failover, 3))
    print(f"SIGKILL failover: {failover:.3f}s")
    report = check(all_records(procs), lease_of(new))
    assert report.ok, report.problems()


def test_sigstopped_leader_knows_on_resume_that_it_lost_and_never_overlaps(spawn: Any) -> None:
    procs = spawn(3)
    old = wait_until(lambda: the_leader(procs), 30, "one process leads")
    lease = lease_of(old)
    stopped_at = old.signal(signal.SIGSTOP)
    others = [p for p in procs if p is not old]
    wait_until(lambda: the_leader(others, after=stopped_at), TTL + TTL + 15, "another process leads")
    resumed_at = old.signal(signal.SIGCONT)
    deposed = wait_until(lambda: [r for r in old.records() if r["ev"] == "deposed" and r["t"] > resumed_at],
                         30, "the resumed process sends `deposed`")
    assert deposed[0]["reason"] in ("lease expired", "lock lost")

    # The job's step that SIGSTOP froze finishes after SIGCONT: only a
    # fencing token can stop that; the checker counts it up to the freeze.
    freeze = {"ev": "fault", "kind": "candidate SIGSTOP", "t": stopped_at, "target": old.identity,
              "lease_bound": stopped_at, "frozen_pid": old.pid}
    records = all_records(procs) + [freeze]
    old_terms = [t for t in terms(records) if t.id == old.identity]
    assert old_terms and old_terms[0].start < stopped_at
    # Its belief ended before the lease could have: no sample after resuming
    # saw it leading.
    assert all(t.end < stopped_at + lease for t in old_terms if t.start < resumed_at)
    assert lease_violations(terms(records), [{"kind": "SIGSTOP", "target": old.identity,
                                              "lease_bound": stopped_at}], lease) == []
    report = check(records, lease)
    assert report.ok, report.problems()
