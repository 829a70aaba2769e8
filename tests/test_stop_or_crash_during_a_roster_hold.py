"""Fixed after review; what went wrong before:

stop() during a roster hold hands the key on after the stopping
candidate's own lock-delay, not after the hold it was serving.

A key is deleted under a leader ("old": lock_delay 10 s, ttl 3 s, so its job
may wind down for up to ``lock_delay - lease`` = 7.5 s; this one takes 5 s).
A fresh candidate "n" takes LockIndex 1, reads the roster, finds old's
entry and holds the lock 10 s before leading (correct). Another fresh
candidate "w" waits behind it; it never saw old hold the key (it started
after the deletion), so all it knows of the key is n's flags (3 s).

n is stopped 1 s into its hold. ``_lock_delay_wait`` returns, nothing is
released, and stop() destroys n's session ("Consul then applies the
lock-delay to whoever comes next", says the comment): but Consul applies
*n's* lock-delay, 3 s, not the 9 s left of the hold n owed old. w's
acquisition after that follows an invalidation it saw (LockAttempt.follows
is True), so ``hold_with_roster`` is never asked, and w's own hold is the
invalidation's (3 s, from when it saw the key free): w's job starts about
4 s after the deletion, while old's job is still winding down.

Measured on the review's run (Consul 1.8.7, 2 cores): w's job started
4.02 s after the deletion; old's job ended 5.0 s after it: the two jobs
overlapped 0.985 s. (Had n not been stopped, the first job after old's
would have started 10.0 s after the deletion.)

A crash during the hold does the same, a check TTL later (second test:
old's lock-delay 15 s, its job winds down 10 s, n SIGKILLed 1 s into its
15 s hold): w's job started 6.27 s after the deletion, old's ended 10.0 s
after it, an overlap of 3.73 s. An Elector in n's place is safe: stopped
in ``delay-wait``, it deletes the key (``_drop_delay_wait``), w's lock is a
first lock, reads the roster and holds old's 10 s (measured: w's job 11.0 s
after the deletion, no overlap).

It needs mixed lock-delays (the stopping candidate's shorter than the one
it held for), which the roster was added to cover ("Mixed timings after
the flags are gone"): library candidates beside ``consul-leader run``,
whose lock-delay grows with ``--grace``. A ``run`` stopped by SIGTERM during
its hold (a rolling restart) behaves as n does.

Suggested fix: a hold is an obligation of the lock, not of the process.
For stop(), do what the Elector's ``_drop_delay_wait`` already does for a
withdrawn key in ``delay-wait``: delete the key, guarded by the
acquisition's ModifyIndex, before destroying the session, so that the next
holder's lock is a first lock and reads the roster (old's entry: 10 s). Or
stop() during a hold keeps the session (and the lock) until the hold's end
(it already blocks for a slow job). A crash needs the hold written where
the next holder sees it: rewrite the key's flags (its lock-delay field) to the hold
in a CAS write right after the roster read, so that a follower's
``longest_delay`` covers it; or have a lock that follows an invalidation
consult the roster too (``hold_with_roster`` for every lock whose previous
holder could have been holding for someone else).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, python_env, wait_until

#: How long old's job takes to return once told to stop: within its margin
#: (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 5.0


def holder(url: str) -> object:
    r = requests.get(url, timeout=5)
    return r.json()[0].get("Session") if r.status_code == 200 else None


def test_stop_during_a_roster_hold_lets_the_next_candidate_lead_beside_the_job_it_held_for(
        consul_agent: ConsulAgent, key: str) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    jobs = Jobs()
    old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
    n = Candidate(key, identity="n", address=consul_agent.address, ttl=3)
    w = Candidate(key, identity="w", address=consul_agent.address, ttl=3)
    try:
        old.run(jobs.job("old", WIND_DOWN), block=False)
        assert old.wait_for_leadership(30)
        wait_until(lambda: "old" in jobs.started, what="old's job")
        deleted_at = time.monotonic()
        requests.delete(url, timeout=5).raise_for_status()
        n.run(jobs.job("n", 0.0), block=False)
        # n took the key (and holds it for old's lock-delay); w queues behind it.
        wait_until(lambda: holder(url) is not None, what="n to take the key")
        w.run(jobs.job("w", 0.0), block=False)
        wait_until(lambda: w.leader() == "n", what="w to see n hold the key")
        time.sleep(max(0.0, deleted_at + 1.0 - time.monotonic()))
        n.stop()
        wait_until(lambda: "w" in jobs.started, timeout=30, what="w's job")
        w_after = round(jobs.started["w"] - deleted_at, 2)
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to end")
        old_end = round(jobs.ended("old") - deleted_at, 2)
    finally:
        w.stop()
        n.stop()
        old.stop()
    print(f"w's job started {w_after}s after the deletion; old's job ended {old_end}s after it; "
          f"overlaps {jobs.overlaps()}")
    assert "n" not in jobs.started, "n led before it was stopped: the scene did not happen"
    assert [o for o in jobs.overlaps() if "old" in o[:2]] == [], \
        f"w's job started {w_after}s after the deletion, old's ended {old_end}s after it: {jobs.overlaps()}"


HOLDER = textwrap.dedent("""
    import sys, time
    from consul_leader import Candidate
    c = Candidate(sys.argv[1], identity="n", address=sys.argv[2], ttl=3)
    c.start()
    time.sleep(600)
""")


def test_a_crash_during_a_roster_hold_lets_the_next_candidate_lead_beside_the_job_it_held_for(
        consul_agent: ConsulAgent, key: str) -> None:
    """The same with n SIGKILLed 1 s into its hold: Consul frees the key a
    check TTL later, with n's lock-delay (3 s), and w leads then. old's
    lock-delay is 15 s here (margin 12.5 s) and its job winds down 10 s.
    Measured: w's job 6.27 s after the deletion, old's end 10.0 s after it,
    overlap 3.73 s."""
    url = f"{consul_agent.url}/v1/kv/{key}"
    jobs = Jobs()
    old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=15)
    w = Candidate(key, identity="w", address=consul_agent.address, ttl=3)
    proc = None
    try:
        old.run(jobs.job("old", 10.0), block=False)
        assert old.wait_for_leadership(30)
        wait_until(lambda: "old" in jobs.started, what="old's job")
        deleted_at = time.monotonic()
        requests.delete(url, timeout=5).raise_for_status()
        proc = subprocess.Popen([PYTHON, "-c", HOLDER, key, consul_agent.address], env=python_env())
        wait_until(lambda: holder(url) is not None, what="n to take the key")
        w.run(jobs.job("w", 0.0), block=False)
        wait_until(lambda: w.leader() == "n", what="w to see n hold the key")
        time.sleep(max(0.0, deleted_at + 1.0 - time.monotonic()))
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: "w" in jobs.started, timeout=40, what="w's job")
        w_after = round(jobs.started["w"] - deleted_at, 2)
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to end")
        old_end = round(jobs.ended("old") - deleted_at, 2)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        w.stop()
        old.stop()
    print(f"crash: w's job started {w_after}s after the deletion; old's job ended {old_end}s after it; "
          f"overlaps {jobs.overlaps()}")
    assert [o for o in jobs.overlaps() if "old" in o[:2]] == [], \
        f"w's job started {w_after}s after the deletion, old's ended {old_end}s after it: {jobs.overlaps()}"
