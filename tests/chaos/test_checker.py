"""The chaos checker flags what it must: it is pure logic over records, so
these feed it hand-made records of the failures it exists to catch."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from chaos.checker import check, late_deposed

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


# -- the work: jobs and commands ---------------------------------------------

def work(pid: int, token: Any, start: float, last: float, kind: str = "job", ended: bool = True,
         step: Any = None) -> List[Dict[str, Any]]:
    """A job (or command) that ran from *start* to *last*, one step record
    every 0.1 s; *step* stamps every record with that step start time."""
    who = {"id": f"p{pid}", "pid": pid, "kind": kind, "work": f"{pid}-{kind}-{start}"}
    recs: List[Dict[str, Any]] = [{"ev": "work-start", "t": start, "token": token, **who}]
    t = start
    while t < last:
        t = min(t + 0.1, last)
        recs.append({"ev": "work-alive", "t": t, "step": start if step is None else step, **who})
    if ended:
        recs.append({"ev": "work-end", "t": last + 0.5, **who})
    return recs


def test_work_that_hands_over_passes() -> None:
    records = term(1, 10, 0.0, 1.0) + work(1, 10, 0.01, 0.99) + work(2, 20, 3.0, 4.0, kind="command")
    report = check(records, LEASE)
    assert report.ok, report.problems()
    assert [(w.kind, w.start, w.end) for w in report.work] == [("job", 0.01, 0.99), ("command", 3.0, 4.5)]


def test_a_job_beside_a_command_is_an_overlap() -> None:
    report = check(work(1, 10, 0.0, 3.5) + work(2, 20, 3.0, 4.0, kind="command"), LEASE)
    assert len(report.work_overlaps) == 1 and not report.ok


def test_two_jobs_of_one_process_overlapping_are_found() -> None:
    # The second term's job started while the first term's job still ran.
    report = check(work(1, 10, 0.0, 2.0) + work(1, 20, 1.5, 3.0), LEASE)
    assert len(report.work_overlaps) == 1 and not report.ok


def test_a_killed_command_ends_at_its_last_sign_of_life() -> None:
    records = work(1, 10, 0.0, 3.5, kind="command", ended=False) + work(2, 20, 3.0, 4.0, kind="command")
    assert len(check(records, LEASE).work_overlaps) == 1
    records = work(1, 10, 0.0, 2.5, kind="command", ended=False) + work(2, 20, 3.0, 4.0, kind="command")
    assert check(records, LEASE).ok


def test_a_jobs_return_after_its_last_step_is_no_work() -> None:
    # work() writes work-end 0.5 s after the last step: returning is not work.
    assert check(work(1, 10, 0.0, 2.8) + work(2, 20, 3.0, 4.0), LEASE).ok


def test_a_commands_end_is_its_own_last_act() -> None:
    # A command's work-end is written by the command: it counts.
    report = check(work(1, 10, 0.0, 2.8, kind="command") + work(2, 20, 3.0, 4.0), LEASE)
    assert len(report.work_overlaps) == 1


def test_work_tokens_that_do_not_grow_are_found() -> None:
    report = check(work(1, 20, 0.0, 1.0) + work(2, 10, 3.0, 4.0, kind="command"), LEASE)
    assert len(report.work_token_violations) == 1 and not report.ok


def test_work_with_an_older_token_than_a_term_begun_before_it_is_found() -> None:
    # The flag moved to token 20 at 2.0; a job with token 10 starting at 3.0
    # is the old term's work, begun late.
    records = term(1, 10, 0.0, 1.0) + term(2, 20, 2.0, 5.0) + work(1, 10, 3.0, 3.5)
    report = check(records, LEASE)
    assert report.work_token_violations and not report.ok


def test_the_step_a_frozen_job_was_in_counts_only_up_to_the_freeze() -> None:
    fault = {"ev": "fault", "kind": "candidate SIGSTOP", "t": 1.0, "target": "p1", "frozen_pid": 1}
    # Step begun at 0.95, frozen at 1.0, its next record on resume at 3.5.
    frozen_step = work(1, 10, 0.0, 0.9) + [
        {"ev": "work-alive", "t": 3.5, "step": 0.95, "id": "p1", "pid": 1, "kind": "job", "work": "1-job-0.0"}]
    assert check(frozen_step + work(2, 20, 3.0, 4.0) + [fault], LEASE).ok
    # Without the freeze the same records are an overlap.
    assert check(frozen_step + work(2, 20, 3.0, 4.0), LEASE).work_overlaps
    # A step begun after the resume counts in full.
    new_step = [{"ev": "work-alive", "t": 3.5, "step": 3.5, "id": "p1", "pid": 1, "kind": "job", "work": "1-job-0.0"}]
    assert check(frozen_step + new_step + work(2, 20, 3.0, 4.0) + [fault], LEASE).work_overlaps


def test_a_step_begun_between_the_sigstop_and_the_stop_counts_only_up_to_the_stop() -> None:
    # The signal at 1.0, every thread seen stopped at 1.001 (lease_bound):
    # a thread that ran on meanwhile began a step at 1.0004 (a 10-minute
    # chaos run, seed 515151: counted in full, a 0.95 s overlap that was
    # no work at all).
    fault = {"ev": "fault", "kind": "candidate SIGSTOP", "t": 1.0, "lease_bound": 1.001, "target": "p1",
             "frozen_pid": 1}
    frozen_step = work(1, 10, 0.0, 0.9) + [
        {"ev": "work-alive", "t": 1.0004, "step": 1.0004, "id": "p1", "pid": 1, "kind": "job", "work": "1-job-0.0"},
        {"ev": "work-alive", "t": 3.5, "step": 1.0004, "id": "p1", "pid": 1, "kind": "job", "work": "1-job-0.0"}]
    assert check(frozen_step + work(2, 20, 3.0, 4.0) + [fault], LEASE).ok
    assert check(frozen_step + work(2, 20, 3.0, 4.0) + [dict(fault, lease_bound=1.0)], LEASE).work_overlaps


def stopped(pid: int, **fields: Any) -> Dict[str, Any]:
    return {"ev": "stopped", "id": f"p{pid}", "proc": "candidate", "killed_by_fault": False, "forced": False,
            "ran_until_end": True, "code": 0, **fields}


def final(pid: int, **fields: Any) -> Dict[str, Any]:
    health = {"ok": True, "running": True, "is_leader": False}
    return {"ev": "final", "id": f"p{pid}", "pid": pid, "t": 9.0, "health": health, "leading": False,
            "job_running": 0, "sampler_alive": True, **fields}


def exited(pid: int) -> Dict[str, Any]:
    return {"ev": "exit", "id": f"p{pid}", "pid": pid, "t": 9.5}


def test_healthy_candidates_at_the_end_pass() -> None:
    records = [stopped(1), final(1, leading=True, job_running=1), exited(1), stopped(2), final(2), exited(2),
               stopped(3, killed_by_fault=True, ran_until_end=False, code=-9)]
    assert check(records, LEASE).ok


@pytest.mark.parametrize("records", [
    pytest.param([stopped(1, ran_until_end=False, code=1)], id="died during the run"),
    pytest.param([stopped(1, forced=True, code=0), final(1), exited(1)], id="did not exit on SIGTERM in time"),
    pytest.param([stopped(1, code=1), final(1), exited(1)], id="exit code"),
    pytest.param([stopped(1), exited(1)], id="no final probe"),
    pytest.param([stopped(1), final(1, health={"ok": False, "running": True}), exited(1)], id="no heartbeat"),
    pytest.param([stopped(1), final(1, health={"ok": True, "running": False}), exited(1)], id="thread dead"),
    pytest.param([stopped(1), final(1, sampler_alive=False), exited(1)], id="sampler dead"),
    pytest.param([stopped(1), final(1, leading=True, job_running=0), exited(1)], id="leader without its job"),
    pytest.param([stopped(1), final(1, leading=False, job_running=1), exited(1)], id="job without leadership"),
    pytest.param([stopped(1), final(1)], id="stop() did not return"),
    pytest.param([{"ev": "stopped", "id": "s1", "proc": "supervisor", "killed_by_fault": False, "forced": False,
                   "ran_until_end": True, "code": 69, "expected": [0, 143]}], id="supervisor exit code"),
])
def test_a_dead_or_stuck_candidate_is_found(records: List[Dict[str, Any]]) -> None:
    report = check(records, LEASE)
    assert len(report.liveness_violations) == 1 and not report.ok, report.liveness_violations


def test_a_stall_fails_the_run() -> None:
    stall = {"ev": "stall", "t": 5.0, "after": "agent SIGSTOP, lease lapses", "seconds": 45.0, "holder": "p1"}
    report = check(term(1, 10, 0.0, 1.0) + [stall], LEASE)
    assert report.stalls and not report.ok


def test_work_failover_comes_from_the_work() -> None:
    fault = {"ev": "fault", "kind": "supervisor SIGSTOP", "t": 1.0, "target": "p1"}
    run = {"ev": "run", "begin": 0.0, "end": 4.0}
    report = check(work(1, 10, 0.0, 1.0, kind="command", ended=False) + work(2, 20, 2.5, 4.0) + [fault, run], LEASE)
    assert report.work_failovers == {"supervisor SIGSTOP": [1.5]}
    assert abs(report.work_availability - 2.5 / 4.0) < 1e-9
    assert "supervisor SIGSTOP" in report.table()


def receivers(who: str, elected: float, deposed: float, token: int = 0) -> List[Dict[str, Any]]:
    return [{"ev": "elected", "id": who, "pid": 1, "t": elected, "key": "k", "token": token},
            {"ev": "deposed", "id": who, "pid": 1, "t": deposed, "key": "k"}]


def test_an_election_before_the_last_leaders_deposed_receivers_ran_is_found() -> None:
    assert late_deposed(receivers("a", 0.0, 2.0) + receivers("b", 3.0, 4.0)) == []
    late = late_deposed(receivers("a", 0.0, 3.5) + receivers("b", 3.0, 4.0))
    assert len(late) == 1 and "before the deposed receivers of a" in late[0]


@pytest.mark.parametrize("fault", [
    {"ev": "fault", "kind": "elector SIGSTOP", "t": 1.0, "seconds": 2.5, "target": "a"},
    {"ev": "fault", "kind": "elector SIGKILL", "t": 1.0, "target": "a"},
])
def test_a_late_deposed_of_a_frozen_or_killed_process_is_excused(fault: Dict[str, Any]) -> None:
    records = receivers("a", 0.0, 3.5) + receivers("b", 3.0, 4.0)
    assert late_deposed(records + [fault]) == []
    assert len(late_deposed(records + [dict(fault, target="c")])) == 1  # another process's fault excuses nothing


def test_a_late_elected_of_an_older_term_is_no_election() -> None:
    # "b" won (token 5), froze before its receivers ran, and lost the key to
    # "a" (token 9); thawed, it is told elected then deposed at once.
    assert late_deposed(receivers("a", 3.0, 6.0, token=9) + receivers("b", 4.0, 4.01, token=5)) == []
    assert len(late_deposed(receivers("a", 3.0, 6.0, token=9) + receivers("b", 4.0, 4.01, token=12))) == 1
