"""Stopping and the end of a term, against a real agent: stop() from the
job or a receiver, during the first lock wait, or interrupted by a signal;
deposed receivers before another agent elects; sys.exit() in a job or a
receiver; every thread ended by stop()."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import pytest
import requests

from consul_leader import Candidate, leader_changed
from consul_leader.testing import ConsulAgent, ConsulCluster

from conftest import PYTHON, python_env, wait_until


def sessions_named(url: str, key: str) -> List[Dict[str, Any]]:
    return [s for s in requests.get(f"{url}/v1/session/list", timeout=5).json() if key in s.get("Name", "")]


def key_entry(url: str, key: str) -> Optional[Dict[str, Any]]:
    r = requests.get(f"{url}/v1/kv/{key}", timeout=5)
    return None if r.status_code == 404 else r.json()[0]


# -- stop() from the job or a receiver never finishes stopping ----------------

@pytest.mark.parametrize("caller", ["job", "elected receiver"])
def test_stop_from_the_job_or_a_receiver_ends_run_and_leaves_the_election(
        make_candidate: Any, key: str, consul_agent: ConsulAgent, caller: str) -> None:
    c = make_candidate(key)
    events = c.events()
    if caller == "elected receiver":
        c.on_elected(lambda candidate, **kw: candidate.stop())

    def job(stop: threading.Event) -> None:
        if caller == "job":
            c.stop()
        stop.wait()

    ran: List[BaseException] = []

    def run() -> None:
        try:
            c.run(job)
        except BaseException as exc:  # pragma: no cover - reported below
            ran.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    ended = threading.Event()
    kinds: List[str] = []

    def drain() -> None:
        for event in events:
            kinds.append(event.kind)
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    wait_until(lambda: "deposed" in kinds, what="the term ended")
    # What stop() promises, whoever calls it: run() returns, the session is
    # destroyed (no heartbeats go on), events() iterators end.
    runner.join(20)
    assert not runner.is_alive(), "run() still blocks after the candidate stopped itself"
    assert ran == []
    wait_until(lambda: sessions_named(consul_agent.url, key) == [], timeout=20, what="the session destroyed")
    assert ended.wait(20), "events() iterator still open"


# -- the first-lock wait is given away by a release -----------------------------

def test_stop_during_the_first_lock_wait_does_not_let_another_lead_before_the_lock_delay(
        make_candidate: Any, consul_agent: ConsulAgent) -> None:
    url = consul_agent.url
    key = f"test/first-lock-{uuid.uuid4().hex[:8]}/leader"
    # An old leader holds the key (a raw session: a leader that has not
    # noticed anything yet), then an operator deletes the key under it.
    old = requests.put(f"{url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    assert requests.put(f"{url}/v1/kv/{key}?acquire={old}", data=b"old", timeout=5).json() is True
    lock_delay = 10.0
    x = make_candidate(key, lock_delay=lock_delay)
    go = threading.Event()

    def on_leader_changed(candidate: Candidate, leader: Optional[str], **kw: Any) -> None:
        if leader is None:
            go.wait(30)
            candidate.stop()  # from a receiver: documented as safe

    leader_changed.connect(on_leader_changed, sender=x, weak=False)
    try:
        x.start()
        wait_until(lambda: x.leader() == "old", what="x saw the old leader")
        requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status()
        # x is now the key's first holder and waits the lock-delay before leading.
        wait_until(lambda: (key_entry(url, key) or {}).get("Value") is not None
                   and key_entry(url, key)["LockIndex"] == 1, what="x took the recreated key")  # type: ignore[index]
        y = make_candidate(key, lock_delay=lock_delay)
        y.start()
        wait_until(lambda: y.leader() == x.identity, what="y saw x holding the key")
        go.set()  # x is stopped during its first-lock wait
        # The old leader may still believe it leads for up to its lease
        # (< lock_delay) after the deletion: nobody may lead before that.
        assert not y.wait_for_leadership(lock_delay / 2), \
            "y led at once after x gave up its first-lock wait: within the old leader's lease"
    finally:
        leader_changed.disconnect(on_leader_changed, sender=x)
        go.set()
        requests.put(f"{url}/v1/session/destroy/{old}", timeout=5)


# -- deposed waits for the heartbeat's request to a frozen agent ---------------

@pytest.mark.parametrize("with_job", [False, True], ids=["receivers only", "with a job"])
def test_deposed_receivers_run_before_another_agent_elects_when_the_leaders_agent_freezes(with_job: bool) -> None:
    order: List[str] = []
    with ConsulCluster(servers=1, clients=2) as cluster:
        c1, c2 = cluster.clients
        key = f"test/frozen-agent-{uuid.uuid4().hex[:8]}/leader"
        # A generous request timeout (a slow network), well within what the
        # docs allow; the lease is the default one.
        x = Candidate(key, address=c1.address, identity="x", timeout=20.0)
        y = Candidate(key, address=c2.address, identity="y")
        x.on_elected(lambda c, **kw: order.append("x elected"))
        x.on_deposed(lambda c, **kw: order.append("x deposed"))
        y.on_elected(lambda c, **kw: order.append("y elected"))
        try:
            if with_job:
                x.run(lambda stop_event: stop_event.wait(), block=False)
            x.start()
            assert x.wait_for_leadership(60)
            y.start()
            wait_until(lambda: y.leader() == "x", what="y saw x lead")
            c1.pause()  # x's agent freezes: x's lease runs out, then Consul frees the lock
            try:
                wait_until(lambda: "y elected" in order, timeout=60, what="y elected")
                wait_until(lambda: "x deposed" in order, timeout=60, what="x deposed")
            finally:
                c1.resume()
            # x's receivers stop what its elected receivers started: that
            # must be over before y's start the same work.
            assert order.index("x deposed") < order.index("y elected"), order
        finally:
            x.stop()
            y.stop()


# -- stop_on_signals(): a job that never returns makes the process unkillable ---

STUCK_CHILD = textwrap.dedent("""
    import sys, threading
    from consul_leader import Candidate, stop_on_signals
    address, key = sys.argv[1:3]
    stop_on_signals()
    c = Candidate(key, address=address)
    c.run(lambda stop_event: threading.Event().wait(), block=False)  # ignores stop_event
    assert c.wait_for_leadership(30)
    print("leading", flush=True)
    c.run(lambda stop_event: threading.Event().wait())
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_a_process_whose_job_does_not_return(consul_agent: ConsulAgent, key: str,
                                                                  signum: int) -> None:
    proc = subprocess.Popen([PYTHON, "-c", STUCK_CHILD, consul_agent.address, key], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=python_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
        proc.send_signal(signum)
        # The first signal waits for the job, holding the lock: by design.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(2)
        # A second one is the operator insisting (a second Ctrl-C): exiting
        # is safe, the job dies with the process and Consul frees the lock
        # after the check's TTL and the lock-delay.
        proc.send_signal(signum)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is not None, "the process ignores a second signal; only SIGKILL ends it"
    finally:
        proc.kill()
        proc.wait()


# -- every stopped candidate leaves its signal thread behind -------------------

def test_stop_ends_every_thread_of_the_candidate(make_candidate: Any, key: str) -> None:
    before = set(threading.enumerate())
    for _ in range(3):
        c = make_candidate(key)
        c.start()
        assert c.wait_for_leadership(30)
        c.stop()
    # A process that makes a candidate per task (a Celery task, a cron run)
    # must not grow a thread per candidate.

    def left() -> List[str]:
        return [t.name for t in set(threading.enumerate()) - before]

    deadline = time.monotonic() + 20
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == [], "threads of stopped candidates still alive"


# -- a receiver that raises SystemExit wedges the term ending for good ----------

EXITING_RECEIVER_CHILD = textwrap.dedent("""
    import sys, time
    from consul_leader import Candidate
    address, key = sys.argv[1:3]
    c = Candidate(key, address=address, identity="a")
    # A common wish: leave when deposed, and let the orchestrator restart us.
    c.on_deposed(lambda candidate, **kw: sys.exit(1))
    c.start()
    assert c.wait_for_leadership(30)
    print("leading", flush=True)
    sys.stdin.readline()
    c.resign()
    time.sleep(120)
""")


def test_a_receiver_calling_sys_exit_does_not_keep_the_lock_forever(make_candidate: Any, key: str,
                                                                    consul_agent: ConsulAgent) -> None:
    proc = subprocess.Popen([PYTHON, "-c", EXITING_RECEIVER_CHILD, consul_agent.address, key],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=python_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
        b = make_candidate(key)
        b.start()
        wait_until(lambda: b.leader() == "a", what="b saw a lead")
        assert proc.stdin is not None
        proc.stdin.write("resign\n")
        proc.stdin.flush()
        assert b.wait_for_leadership(30), "a resigned and is alive, yet holds the lock: nobody leads"
    finally:
        proc.kill()
        proc.wait()


# -- a job that raises SystemExit leaves a leader without a job, for good ------

def test_a_job_calling_sys_exit_makes_the_candidate_step_down(make_candidate: Any, key: str) -> None:
    a, b = make_candidate(key), make_candidate(key)
    a.run(lambda stop_event: sys.exit(0), block=False)  # a job "that exits when done"
    assert a.wait_for_leadership(30)
    b.start()
    # "If the job returns (or raises) while leading, the candidate resigns."
    assert b.wait_for_leadership(30), "a leads on with no job, and nobody else can"


# -- a signal that interrupts stop() makes the next stop() give the lock away ---

INTERRUPTED_STOP_CHILD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from consul_leader import Candidate
    address, key = sys.argv[1:3]
    # Python's own SIGINT handler, also when started with SIGINT ignored
    # (a shell's background job), which Python would keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    c = Candidate(key, address=address, identity="a")

    def job(stop_event):
        while True:  # ignores stop_event: stop() must wait, holding the lock
            print("tick", flush=True)
            time.sleep(0.2)

    c.run(job, block=False)
    assert c.wait_for_leadership(30)
    print("leading", flush=True)
    # Ctrl-C while stop() waits for the job (Python's default SIGINT handler).
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        c.stop()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    c.stop()  # e.g. a shutdown hook, or atexit: must keep waiting for the job
    print("second stop returned", flush=True)
    time.sleep(60)
""")


def test_a_stop_interrupted_by_a_signal_does_not_let_the_next_stop_release_beside_the_job(
        make_candidate: Any, key: str, consul_agent: ConsulAgent) -> None:
    proc = subprocess.Popen([PYTHON, "-c", INTERRUPTED_STOP_CHILD, consul_agent.address, key],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=python_env())
    lines: List[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    try:
        # The job's thread prints too: print() may splice a line with a "tick".
        wait_until(lambda: any("leading" in x for x in lines), what="a leads")
        b = make_candidate(key)
        b.start()
        try:
            wait_until(lambda: any("interrupted" in x for x in lines), what="a's stop() interrupted")
        except AssertionError as exc:  # say what the child did instead
            raise AssertionError(f"{exc}; a printed {[x for x in lines if x != 'tick'][-20:]}, "
                                 f"exit code {proc.poll()}") from None
        # a's job still runs (it never returns): nobody else may lead.
        assert not b.wait_for_leadership(10), \
            f"b leads while a's job still runs; a printed {[x for x in lines if x != 'tick']}"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
