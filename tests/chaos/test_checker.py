"""The chaos checker flags what it must: it is pure logic over records, so
these feed it hand-made records of the failures it exists to catch."""

from __future__ import annotations

from typing import Any, Dict, List

from chaos.checker import check

LEASE = 0.8


def term(pid: int, token: int, start: float, last: float, closed: bool = True) -> List[Dict[str, Any]]:
    recs: List[Dict[str, Any]] = [{"ev": "up", "id": f"p{pid}", "pid": pid, "t": start, "token": token},
                                  {"ev": "alive", "id": f"p{pid}", "pid": pid, "t": last}]
    if closed:
        recs.append({"ev": "down", "id": f"p{pid}", "pid": pid, "t": last + 0.001, "last": last, "token": token})
    return recs


def test_handover_without_overlap_passes() -> None:
    report = check(term(1, 10, 0.0, 1.0) + term(2, 20, 3.0, 4.0), LEASE)
    assert report.ok and len(report.terms) == 2


def test_overlapping_terms_are_found_even_when_one_process_was_killed() -> None:
    report = check(term(1, 10, 0.0, 3.5, closed=False) + term(2, 20, 3.0, 4.0), LEASE)
    assert len(report.overlaps) == 1 and not report.ok


def test_fencing_token_that_does_not_grow_is_found() -> None:
    report = check(term(1, 20, 0.0, 1.0) + term(2, 10, 3.0, 4.0), LEASE)
    assert len(report.token_violations) == 1 and not report.ok


def test_one_term_seen_twice_by_the_same_process_is_no_token_violation() -> None:
    report = check(term(1, 10, 0.0, 1.0) + term(1, 10, 1.2, 2.0), LEASE)
    assert report.ok


def test_term_outliving_its_lease_after_a_sigstop_is_found() -> None:
    fault = {"ev": "fault", "kind": "candidate SIGSTOP", "t": 1.0, "target": "p1", "lease_bound": 1.0}
    assert check(term(1, 10, 0.0, 1.0 + LEASE + 0.1) + [fault], LEASE).lease_violations
    assert check(term(1, 10, 0.0, 1.0 + LEASE - 0.1) + [fault], LEASE).ok


def test_availability_and_failover_come_from_the_terms() -> None:
    fault = {"ev": "fault", "kind": "candidate SIGKILL", "t": 1.0, "target": "p1"}
    run = {"ev": "run", "begin": 0.0, "end": 4.0}
    report = check(term(1, 10, 0.0, 1.0) + term(2, 20, 3.0, 4.0) + [fault, run], LEASE)
    assert abs(report.availability - 0.5) < 1e-9
    assert report.failovers == {"candidate SIGKILL": [2.0]}
