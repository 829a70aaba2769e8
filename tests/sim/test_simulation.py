"""The simulator: schedules of faults on simulated candidates that make
the engine's own decisions, checked by the chaos run's checker. A short
run is part of the default suite; ``make simulate`` runs many more."""

from __future__ import annotations

import json
import time

import pytest

from consul_leader.testing.sim import ConsulModel, ManualTimers
from consul_leader.testing.sim.__main__ import main, run_seeds
from consul_leader.testing.sim.candidate import SimCandidate
from consul_leader.testing.sim.mutations import MUTATIONS, mutated
from consul_leader.testing.sim.schedule import KINDS, simulate

#: The short run of the default suite.
SHORT_RUN = 200


def test_a_short_run_of_fault_schedules_keeps_one_leader_and_one_work_at_a_time() -> None:
    began = time.monotonic()
    results = run_seeds(range(SHORT_RUN))
    took = time.monotonic() - began
    failed = [(seed, problems) for seed, problems, _ in results if problems]
    # The rate goes to the output, not into an assertion.
    print(f"\n{len(results)} schedules of 180 simulated seconds in {took:.1f}s: "
          f"{len(results) / took * 60:.0f} schedules per minute on one process")
    assert failed == [], "\n".join(f"random seed {seed}: {problems}\nreplay: python -m consul_leader.testing.sim "
                                   f"--seed {seed}" for seed, problems in failed[:3])


def test_the_same_seed_gives_the_same_history_byte_for_byte() -> None:
    first = json.dumps(simulate(7, seconds=60).records, sort_keys=True)
    again = json.dumps(simulate(7, seconds=60).records, sort_keys=True)
    other = json.dumps(simulate(8, seconds=60).records, sort_keys=True)
    assert first == again
    assert first != other


def test_every_fault_kind_is_drawn_and_every_schedule_elects_and_hands_over() -> None:
    seen = set()
    for seed in range(40):
        outcome = simulate(seed)
        seen |= {r["kind"] for r in outcome.records if r["ev"] == "fault"}
        terms = [r for r in outcome.records if r["ev"] == "up"]
        assert len({r["id"] for r in terms}) >= 2, f"random seed {seed}: leadership never moved"
    assert seen == set(KINDS)


# "lapsed lease revived" is left out: the checker accepts two intervals of
# one term (a late heartbeat after a lapse), as the chaos run does, so
# putting the lapse latch's bug back breaks no rule it checks (see
# docs/simulation.rst).
CAUGHT = sorted(set(MUTATIONS) - {"lapsed lease revived"})


@pytest.mark.parametrize("name", CAUGHT)
def test_a_known_bug_put_back_is_caught_within_a_hundred_schedules(name: str) -> None:
    with mutated(name):
        caught = next((seed for seed in range(100) if not simulate(seed).ok), None)
    print(f"\n{name}: caught by random seed {caught}")
    assert caught is not None


def test_a_failing_schedule_prints_its_problems_and_the_command_that_replays_it(capsys) -> None:
    name = "next job before the last returned"
    assert main(["--seeds", "3", "--mutation", name]) == 1
    out = capsys.readouterr().out
    assert "(d) work overlap" in out
    assert f"replay: python -m consul_leader.testing.sim --seed 0 --seconds 180 --mutation '{name}'" in out
    assert out.rstrip().endswith("schedules per minute")
    assert main(["--seed", "0", "--mutation", name]) == 1
    replayed = capsys.readouterr().out
    assert '"ev": "fault"' in replayed and "== work overlap" in replayed


# -- what the model claims that one dev agent cannot show -------------------

def model_with_holder(lock_delay: float = 3.0) -> tuple[ConsulModel, ManualTimers, str, str]:
    timers = ManualTimers()
    consul = ConsulModel(timers, servers=3)
    consul.add_node("n1")
    holder = consul.create_session("n1", lock_delay=lock_delay)
    waiter = consul.create_session("n1", lock_delay=lock_delay)
    assert consul.acquire("k", b"holder", holder)
    return consul, timers, holder, waiter


def test_the_lock_delay_is_checked_before_commit_so_an_invalidation_in_between_lets_a_lock_in() -> None:
    consul, timers, holder, waiter = model_with_holder()
    ops = [{"Verb": "lock", "Key": "k", "Value": b"waiter", "Session": waiter}]
    assert consul.precheck(ops) is None  # held, but no lock-delay runs yet
    consul.destroy_session(holder)       # invalidated before the commit
    timers.advance(0.003)
    results, error = consul.apply(ops)
    assert error is None and results[0] is not None and results[0].session == waiter
    # Sent after the invalidation, the same acquisition is refused.
    consul2, _, holder2, waiter2 = model_with_holder()
    consul2.destroy_session(holder2)
    assert "lock delay" in (consul2.txn([dict(ops[0], Session=waiter2)])[1] or "")


def test_a_new_raft_leader_enforces_only_the_lock_delays_it_had_applied() -> None:
    consul, timers, holder, waiter = model_with_holder()
    consul.destroy_session(holder)
    consul.lose_leader()
    consul.elect(2)  # a follower that applies the invalidation a few ms later
    assert consul.acquire("k", b"waiter", waiter)
    consul, timers, holder, waiter = model_with_holder()
    consul.destroy_session(holder)
    timers.advance(0.1)
    consul.elect(2)  # applied by now
    assert not consul.acquire("k", b"waiter", waiter)
    consul.elect(1, from_snapshot=True)  # restored from a snapshot: lock-delays are memory only
    assert consul.acquire("k", b"waiter", waiter)


def test_a_critical_check_a_frozen_agent_and_a_session_ttl_invalidate_as_consul_does() -> None:
    timers = ManualTimers()
    consul = ConsulModel(timers, servers=1, serf_detect=5.0)
    consul.add_node("n1")
    consul.register_check("n1", "c", ttl=3.0)
    on_check = consul.create_session("n1", ("serfHealth", "c"), lock_delay=0)
    on_ttl = consul.create_session("n1", ("serfHealth",), lock_delay=0, ttl=10)
    timers.advance(2.9)
    consul.pass_check("n1", "c")
    timers.advance(2.9)
    assert consul.session_valid(on_check)
    timers.advance(0.2)
    assert not consul.session_valid(on_check)  # 3 s after the last pass, and the agent's sync
    assert consul.session_valid(on_ttl)
    timers.advance(14.1)
    assert not consul.session_valid(on_ttl)    # Consul reaps at up to twice the session TTL
    consul.register_check("n1", "c", ttl=3.0)
    frozen = consul.create_session("n1", ("serfHealth", "c"), lock_delay=0)
    consul.freeze_agent("n1")
    timers.advance(4.0)
    assert consul.session_valid(frozen)        # the agent's TTL timer is stopped with it
    timers.advance(1.1)
    assert not consul.session_valid(frozen)    # the servers marked the node failed


def test_a_change_wakes_every_blocking_query_on_the_key_even_those_that_cancel_themselves() -> None:
    timers = ManualTimers()
    consul = ConsulModel(timers, servers=1)
    woken = []
    cancels = []
    for i, name in enumerate(("leader's watch", "waiter", "another waiter")):
        def wake(name: str = name, i: int = i) -> None:
            woken.append(name)
            cancels[i]()  # as a blocking query that answers stops watching
        cancels.append(consul.watch("k", wake))
    consul.put("k", b"x")
    assert woken == ["leader's watch", "waiter", "another waiter"]


def test_a_lock_lost_during_a_short_hold_off_is_not_led_since_the_engine_reads_the_key_after_a_hold() -> None:
    # Found by the storm (overlapping faults) with mixed timings: a ttl=9
    # candidate holds its lock 5.96 s (less than its 7.5 s lease) after an
    # invalidation; meanwhile the key is deleted and a ttl=3 candidate leads
    # it; at the hold's end the first one led on the lease its acquisition
    # proved, without reading the key, and its job's first step overlapped.
    # Candidate._lead now reads the key after any hold; played as it was,
    # the schedule still fails.
    assert simulate(1917, storm=True).ok
    SimCandidate.REREAD_AFTER_HOLD = False
    try:
        assert "(a) overlap" in simulate(1917, storm=True).report.problems()
    finally:
        SimCandidate.REREAD_AFTER_HOLD = True


def test_the_storm_and_the_timings_are_options_of_the_command_and_of_its_replay_line(capsys) -> None:
    assert main(["--seeds", "2", "--seconds", "40", "--storm", "--timings", "same"]) == 0
    assert "2 schedules of 40 simulated seconds, 0 failed" in capsys.readouterr().out
    # 2728: a holder's lock-delay lost with its deleted key (an open finding, docs/simulation.rst).
    assert main(["--seeds", "1", "--start", "2728", "--storm", "--timings", "mixed"]) == 1
    assert "replay: python -m consul_leader.testing.sim --seed 2728 --seconds 180 --storm --timings mixed" in \
        capsys.readouterr().out
