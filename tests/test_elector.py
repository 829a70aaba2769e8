"""Elector: many elections in one process on one session, against a real agent."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import textwrap
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
import requests

from consul_leader import Candidacy, Elector, Reason, deposed, elected
from consul_leader.testing import ConsulAgent, delete_key, destroy_session, session_id

from conftest import PYTHON, paused_leader_run, prime_key, python_env, wait_until

N = 120


@pytest.fixture
def electors(consul_agent: ConsulAgent) -> Iterator[List[Elector]]:
    made: List[Elector] = []
    yield made
    for e in made:
        e.stop()


def make(made: List[Elector], agent: ConsulAgent, prefix: str, identity: str, n: int = N, **kwargs: Any) -> Elector:
    e = Elector(prefix, identity=identity, address=agent.address, ttl=kwargs.pop("ttl", 1.0), **kwargs)
    made.append(e)
    for i in range(n):
        e.candidate(f"k{i}")
    return e


def primed(agent: ConsulAgent, prefix: str, n: int = N) -> str:
    """Keys that were locked and released once: no first-holder wait."""
    for i in range(n):
        prime_key(agent.url, f"{prefix}/k{i}")
    return prefix


def holders(agent: ConsulAgent, prefix: str) -> Dict[str, str]:
    """key -> identity of its holder, as Consul sees it."""
    entries = requests.get(f"{agent.url}/v1/kv/{prefix}/?recurse", timeout=5).json()
    return {e["Key"]: base64.b64decode(e["Value"] or "").decode() for e in entries if e.get("Session")}


def agent_connections(agent: ConsulAgent) -> int:
    """Established TCP connections of this process to the agent's HTTP port."""
    port = int(agent.address.rsplit(":", 1)[1])
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                    count += 1
    return count


@pytest.fixture
def own_agent() -> Iterator[ConsulAgent]:
    """An agent that only this test's elector talks to, so that counting
    this process's connections to it counts the elector's alone."""
    with ConsulAgent() as agent:
        yield agent


def test_a_hundred_keys_share_one_session_one_check_and_four_threads(
        own_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    consul_agent = own_agent
    e = make(electors, consul_agent, primed(consul_agent, prefix), "one").start()
    for c in e.candidacies():
        assert c.wait_for_leadership(30)
    assert len(holders(consul_agent, prefix)) == N
    sessions = [s for s in requests.get(f"{consul_agent.url}/v1/session/list", timeout=5).json()
                if prefix in s["Name"]]
    assert [s["ID"] for s in sessions] == [session_id(e)]
    checks = [c for c in requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json().values()
              if prefix in c["Name"]]
    assert len(checks) == 1
    ours = [t.name for t in threading.enumerate() if prefix in t.name]
    assert len(ours) <= 4, ours
    time.sleep(2.5)  # a few heartbeat rounds and renewals while leading every key
    assert agent_connections(consul_agent) <= 4
    assert all(c.is_leader() for c in e.candidacies())


def test_every_key_has_one_leader_across_two_processes(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    primed(consul_agent, prefix)
    proc = subprocess.Popen([PYTHON, "-c", ELECTOR_PROC, consul_agent.address, prefix, "there", str(N), os.devnull],
                            env=python_env())
    try:
        here = make(electors, consul_agent, prefix, "here").start()
        wait_until(lambda: len(holders(consul_agent, prefix)) == N, timeout=30, what="every key held")
        time.sleep(1.0)
        seen = holders(consul_agent, prefix)
        for c in here.candidacies():
            assert c.is_leader() == (seen[c.key] == "here")
            assert c.leader() == seen[c.key]
        tokens = {c.key: c.fencing_token for c in here.candidacies() if c.is_leader()}
        proc.kill()
        proc.wait()
        wait_until(lambda: all(c.is_leader() for c in here.candidacies()), timeout=30,
                   what="the survivor leads every key")
        for c in here.candidacies():
            if c.key in tokens:
                assert c.fencing_token == tokens[c.key]  # its own terms went on undisturbed
    finally:
        proc.kill()
        proc.wait()


def test_one_key_hands_over_while_the_others_are_held(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix), "a").start()
    for c in a.candidacies():
        assert c.wait_for_leadership(30)
    b = make(electors, consul_agent, prefix, "b").start()
    time.sleep(0.5)
    tokens = {c.key: c.fencing_token for c in a.candidacies()}
    moved, stays = a.candidacies()[7], a.candidacies()
    assert moved.resign()
    target = next(c for c in b.candidacies() if c.key == moved.key)
    assert target.wait_for_leadership(10)
    assert target.fencing_token is not None and target.fencing_token > tokens[moved.key]
    assert not moved.is_leader()
    wait_until(lambda: moved.leader() == "b", timeout=10, what="a sees b lead the key")
    for c in stays:
        if c is not moved:
            assert c.is_leader() and c.fencing_token == tokens[c.key]
    assert [c.key for c in b.candidacies() if c.is_leader()] == [moved.key]


def test_a_key_added_to_a_running_elector_sees_its_leader_and_takes_over(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    # The watch hands the worker only the entries that changed: a key taken
    # part in later, whose entry does not change, must still be looked at.
    a = make(electors, consul_agent, primed(consul_agent, prefix, 3), "a", n=3).start()
    for c in a.candidacies():
        assert c.wait_for_leadership(30)
    prime_key(consul_agent.url, f"{prefix}/other")
    b = make(electors, consul_agent, prefix, "b", n=0)
    b.candidate("other")
    b.start()
    assert b.candidacies()[0].wait_for_leadership(30)
    time.sleep(1.5)  # b's watch and heartbeat have listed the prefix since
    late = b.candidate("k1")
    wait_until(lambda: late.leader() == "a", timeout=10, what="the added key sees its leader")
    held = next(c for c in a.candidacies() if c.key == late.key)
    token = held.fencing_token
    assert held.resign()
    assert late.wait_for_leadership(10)
    assert late.fencing_token is not None and token is not None and late.fencing_token > token


def test_a_destroyed_session_deposes_every_key_and_all_run_again(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    e = make(electors, consul_agent, primed(consul_agent, prefix), "one").start()
    for c in e.candidacies():
        assert c.wait_for_leadership(30)
    tokens = {c.key: c.fencing_token for c in e.candidacies()}
    reasons: List[str] = []
    old = session_id(e)

    def on_deposed(sender: Candidacy, reason: str, **_: Any) -> None:
        if sender.elector is e:
            reasons.append(reason)

    deposed.connect(on_deposed)
    try:
        destroy_session(e)
        wait_until(lambda: len(reasons) == N, timeout=30, what="every key deposed")
        assert set(reasons) == {Reason.LOCK_LOST}
        for c in e.candidacies():
            assert c.wait_for_leadership(30)
            assert c.fencing_token is not None and c.fencing_token > (tokens[c.key] or 0)
        assert session_id(e) != old
    finally:
        deposed.disconnect(on_deposed)


ELECTOR_PROC = textwrap.dedent("""
    import sys, time
    from consul_leader import Elector
    address, prefix, identity, n, out = sys.argv[1:6]
    e = Elector(prefix, address=address, identity=identity, ttl=1.0)
    keys = [e.candidate(f"k{i}") for i in range(int(n))]
    e.start()
    with open(out, "a") as fh:
        while True:
            t = time.monotonic()
            if keys[0].is_leader():
                fh.write(f"{t}\\n")
                fh.flush()
            time.sleep(0.001)
""")


def test_a_key_deleted_under_a_paused_leader_is_taken_only_after_the_lock_delay(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    primed(consul_agent, prefix)
    out = tempfile.mktemp(prefix="consul-leader-old-")
    fresh = make(electors, consul_agent, prefix, "fresh", n=1)
    first = fresh.candidacies()[0]
    stopped_at, led, old = paused_leader_run(
        [PYTHON, "-c", ELECTOR_PROC, consul_agent.address, prefix, "old", str(N), out], out,
        ready=lambda: len(holders(consul_agent, prefix)) == N, fault=lambda: delete_key(first),
        start=fresh.start, is_leader=first.is_leader, pause=0.6)
    assert led[0] >= stopped_at + fresh.timing.lease
    assert max(old) < led[0]


def test_a_slow_job_of_one_key_does_not_delay_the_handover_of_another(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix, 2), "a", n=2)
    slow, quick = a.candidacies()
    let_go = threading.Event()
    ran: Dict[str, List[float]] = {}

    def job_for(c: Candidacy) -> Any:
        def job(stop_event: threading.Event) -> None:
            ran.setdefault(c.key, []).append(time.monotonic())
            stop_event.wait()
            if c is slow:
                let_go.wait()  # a job that takes long to return after its stop_event
            ran[c.key].append(time.monotonic())
        return job

    slow.run(job_for(slow), block=False)
    quick.run(job_for(quick), block=False)
    assert slow.wait_for_leadership(30) and quick.wait_for_leadership(30)
    b = make(electors, consul_agent, prefix, "b", n=2).start()
    b_slow, b_quick = b.candidacies()
    wait_until(lambda: len(ran.get(slow.key, [])) == 1 and len(ran.get(quick.key, [])) == 1, what="both jobs run")
    assert slow.resign() and quick.resign()
    assert b_quick.wait_for_leadership(10)
    assert not b_slow.is_leader() and b_slow.leader() == "a"  # held until its job returns
    let_go.set()
    assert b_slow.wait_for_leadership(10)
    assert ran[slow.key][1] < time.monotonic()
    assert b_slow.fencing_token is not None


def test_a_term_ends_job_first_then_deposed_then_release(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix, 1), "a", n=1)
    b = make(electors, consul_agent, prefix, "b", n=1)
    (ca,), (cb,) = a.candidacies(), b.candidacies()
    order: List[str] = []

    def job(stop_event: threading.Event) -> None:
        stop_event.wait()
        time.sleep(0.3)
        order.append("job returned")

    @ca.on_deposed
    def gone(sender: Candidacy, reason: str, **_: Any) -> None:
        time.sleep(0.3)
        order.append(f"deposed {reason}")

    @cb.on_elected
    def won(sender: Candidacy, fencing_token: int, **_: Any) -> None:
        order.append("b elected")

    ca.run(job, block=False)
    assert ca.wait_for_leadership(30)
    b.start()
    ca.resign()
    assert cb.wait_for_leadership(10)
    wait_until(lambda: len(order) == 3, what="b's elected receiver")
    assert order == ["job returned", "deposed resigned", "b elected"]
    elected.disconnect(won)
    deposed.disconnect(gone)


def test_stop_releases_every_key_at_once(consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix), "leaving").start()
    for c in a.candidacies():
        assert c.wait_for_leadership(30)
    b = make(electors, consul_agent, prefix, "b").start()
    a.stop()
    assert not any(c.is_leader() for c in a.candidacies())
    for c in b.candidacies():
        assert c.wait_for_leadership(a.timing.lock_delay)  # released, not invalidated: no lock-delay
    # The signal thread idles on, as a Candidate's does; the others end.
    assert not [t for t in threading.enumerate() if f"leaving {a.prefix}" in t.name and "signals" not in t.name]


def test_a_withdrawn_key_is_released_and_the_others_stay(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix, 3), "a", n=3).start()
    for c in a.candidacies():
        assert c.wait_for_leadership(30)
    gone = a.candidacies()[1]
    gone.stop()
    assert not gone.is_leader() and gone not in a.candidacies()
    assert f"{prefix}/k1" not in holders(consul_agent, prefix)
    assert all(c.is_leader() for c in a.candidacies())


def test_a_waiting_process_whose_session_was_destroyed_makes_a_new_one_at_once(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    a = make(electors, consul_agent, primed(consul_agent, prefix, 3), "a", n=3).start()
    for c in a.candidacies():
        assert c.wait_for_leadership(30)
    b = make(electors, consul_agent, prefix, "b", n=3).start()
    wait_until(lambda: session_id(b) is not None, timeout=10, what="b's session")
    old = session_id(b)
    destroy_session(b)
    # Every key is held by a: b still keeps a session, ready to lead at once.
    wait_until(lambda: session_id(b) not in (None, old), timeout=10, what="b's new session")
    a.stop()
    for c in b.candidacies():
        assert c.wait_for_leadership(10)


@pytest.mark.parametrize("work", ["job", "receivers"])
def test_the_work_is_told_to_stop_at_its_lease_end_while_the_worker_waits_on_a_frozen_agent(
        own_agent: ConsulAgent, electors: List[Elector], work: str) -> None:
    # The worker thread sits in a request to the frozen agent (the release
    # of a resigned key, up to the 15 s request timeout) while the other
    # key's lease runs out: its work must be told to stop at the lease's
    # end, before anyone else can be elected (the check's TTL after the
    # freeze), not when the worker's request gives up. A job was told 15 s
    # late (the Elector had no lease watchdog for its jobs); so was a key
    # without a job, whose work an on_elected receiver started and only
    # the deposed receivers can stop.
    prefix = primed(own_agent, "frozen-agent", 2)
    a = make(electors, own_agent, prefix, "a", n=2, ttl=3.0, timeout=15.0)
    working, idle = a.candidacies()
    told: List[float] = []

    if work == "job":
        def job(stop_event: threading.Event) -> None:
            stop_event.wait()
            told.append(time.monotonic())

        working.run(job, block=False)
    else:
        @working.on_deposed
        def stop_work(sender: Candidacy, **_: Any) -> None:
            told.append(time.monotonic())

        a.start()

    assert working.wait_for_leadership(30) and idle.wait_for_leadership(30)
    own_agent.pause()
    try:
        frozen = time.monotonic()
        assert idle.resign()  # the worker now sends the release and waits
        wait_until(lambda: told, timeout=20, what=f"the stop of the work ({work})")
        assert told[0] - frozen < a.timing.check_ttl, (
            f"told {told[0] - frozen:.2f}s after the freeze; another process could lead after "
            f"{a.timing.check_ttl}s")
        assert not working.is_leader()
    finally:
        own_agent.resume()
        if work == "receivers":
            deposed.disconnect(stop_work)


def test_a_term_whose_lease_ran_out_before_its_job_started_is_released(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    # The process pauses between a term's start and its job thread's first
    # step, long enough for the lease to run out: the job is not started,
    # and the term must still end and release the key. It stayed held by the
    # live session forever: the worker waited for a job that never ran. The
    # pause is simulated with a clock that jumps for the job thread's first
    # look at the lease.
    jumped: List[bool] = []

    def clock() -> float:
        now = time.monotonic()
        if not jumped and threading.current_thread().name.startswith("consul-leader-job"):
            jumped.append(True)
            return now + 60.0
        return now

    a = make(electors, consul_agent, primed(consul_agent, prefix, 1), "a", n=1, clock=clock)
    ran: List[int] = []
    won: List[int] = []
    (ca,) = a.candidacies()

    @ca.on_elected
    def record(sender: Candidacy, fencing_token: int, **_: Any) -> None:
        won.append(fencing_token)

    ca.run(lambda stop_event: ran.append(ca.fencing_token or 0), block=False)
    # The term ends and the key runs again: a new term, whose job runs.
    wait_until(lambda: ran, timeout=15, what="a job (the key stayed held by a term whose job never started)")
    wait_until(lambda: len(won) >= 2, timeout=5, what="the second term's elected signal")
    assert jumped and ran[0] == won[1] > won[0]
    elected.disconnect(record)


def test_resigned_keys_are_released_only_after_their_jobs_returned_across_many_handovers(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    # Keys resigned back and forth between two electors, each job taking a
    # moment to return after its stop_event: no key's two jobs may overlap.
    # The worker used to handle its last batch of messages again when a
    # timer woke it with nothing queued, and a second "end" of a term went
    # on to release the key while its job still ran.
    n = 30
    primed(consul_agent, prefix, n)
    ran: Dict[str, List[Any]] = {}
    lock = threading.Lock()

    def job_for(c: Candidacy) -> Any:
        def job(stop_event: threading.Event) -> None:
            start = time.monotonic()
            stop_event.wait()
            time.sleep(0.1)  # a job that takes a moment to wind down
            with lock:
                ran.setdefault(c.key, []).append((start, time.monotonic(), c.elector.identity))
        return job

    sides = [make(electors, consul_agent, prefix, name, n=n) for name in ("a", "b")]
    for e in sides:
        for c in e.candidacies():
            c.run(job_for(c), block=False)
    wait_until(lambda: len(holders(consul_agent, prefix)) == n, what="every key held")
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        for e in sides:
            for c in e.candidacies():
                c.resign()
            time.sleep(0.3)
    for key, jobs in ran.items():
        jobs.sort()
        for (_, e1, who1), (s2, _, who2) in zip(jobs, jobs[1:]):
            assert s2 >= e1, f"{key}: {who2}'s job started {e1 - s2:.3f}s before {who1}'s returned"
    assert sum(len(j) for j in ran.values()) > 2 * n


def test_a_job_whose_lease_ran_out_returns_before_its_key_is_released(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    # The lease watchdog finds the lease over first (as when a heartbeat
    # sits in a slow renew at the lease's end; here its clock jumps), Consul
    # still answers, and the job takes a second to return after its
    # stop_event. The watchdog and then the worker each carried the term's
    # ending on: the second went past the wait for the job, delivered
    # deposed and released the key while the job still ran, and the other
    # elector's job started beside it.
    jumped = threading.Event()

    def clock() -> float:
        late = jumped.is_set() and threading.current_thread().name.startswith("consul-leader-lease")
        return time.monotonic() + (1000.0 if late else 0.0)

    a = make(electors, consul_agent, primed(consul_agent, prefix, 1), "a", n=1, ttl=3.0, clock=clock)
    (ca,) = a.candidacies()
    returned: List[float] = []
    started: List[float] = []

    def slow_to_return(stop_event: threading.Event) -> None:
        stop_event.wait()
        time.sleep(1.0)
        returned.append(time.monotonic())

    ca.run(slow_to_return, block=False)
    assert ca.wait_for_leadership(15)
    b = make(electors, consul_agent, prefix, "b", n=1, ttl=3.0)
    (cb,) = b.candidacies()
    cb.run(lambda stop_event: started.append(time.monotonic()) or stop_event.wait(), block=False)
    time.sleep(0.5)  # b waits on the key
    jumped.set()
    wait_until(lambda: started, timeout=20, what="b's job")
    wait_until(lambda: returned, timeout=5, what="a's job's return")
    assert started[0] >= returned[0], f"b's job started {returned[0] - started[0]:.3f}s before a's returned"
