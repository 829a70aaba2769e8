"""Review: an Elector whose flags rewrite fails leads the held lock at once.

The port gave the Elector the Candidate's flags rewrite: a lock that must
be held for another holder's lock-delay longer than its own is first
written into the key's flags (``Seat.note_hold``, a CAS write) before the
hold (``KeyWork._maybe_acquire``). If that write fails (one ``500 No
cluster leader`` during a Raft election, a timeout), ``_maybe_acquire``
raises after the lock was taken, with no ``delay_wait`` recorded. The
worker backs off 0.1 s and looks again: the key is held by its own session
with no term and no wait ("an acquisition whose answer was lost ...
acquiring it again makes it a term"), so it acquires again; and now the
entry it last listed is its own lock, which that acquisition *follows*
(``LockAttempt.follows``: ``holder == session_id`` and the same
LockIndex). ``hold_off`` answers 0: the Elector leads at once, and the
hold it owed the last leader is gone. (The Candidate is not exposed the
same way: its retry compares with the entry read before the first
acquisition, so it holds again.)

Scene: a Candidate "old" (lock_delay 10 s, its job winds down 5 s, within
its margin of 10 - 2.5 = 7.5 s) leads; an Elector "e" (lock_delay 3 s)
waits for the same key, through a proxy that answers one ``500`` to the
CAS transaction. Someone releases the key for old's session
(``?release=``: Consul sets no lock-delay, tests/test_release_by_another.py);
e takes it, must hold it 10 s (old's flags, and old's roster entry), tries
to write 10 s into the flags, gets the 500.

Measured (Consul 1.8.7, 2 shared cores): e's job started 0.252 s after
the release; old's job ended 5.006 s after it: the jobs overlapped 4.754 s.
The same scene with no failure (the control): e's job started 10.212 s
after the release, no overlap.

The same hole without the port (second test): an acquisition whose answer
was lost (passed on, then a 500) is taken again and followed the same way.
Measured: e's job started 0.65 s after the release, old's ended 5.007 s
after it: the jobs overlapped 4.357 s.

Proposed fix: a lock held by our own session while no term and no wait
has it must not count as seen before an acquisition: either record the
wait before anything that can fail (set ``delay_wait`` from the
``hold_off`` answer first, then ``note_hold``; a failed rewrite keeps the
wait and the sweep retries the rewrite), and for a lost answer remember
the entry that the first acquisition was based on (``KeySeat`` keeps the
``seen`` of an acquisition until it is decided) and decide the retaken lock
against that; or treat such a lock as not following anything (hold it the
roster's lock-delay).
"""

from __future__ import annotations

import json
import time
from typing import Optional

import requests
from garbling_proxy import FailingProxy
from support.jobs import Jobs

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: How long old's job takes to return once told to stop: within its margin
#: (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 5.0


def test_an_elector_whose_flags_rewrite_fails_still_holds_the_lock_for_the_last_leaders_lock_delay(
        consul_agent: ConsulAgent, prefix: str, key: str) -> None:
    def flags_rewrite(method: str, path: str, body: bytes) -> Optional[str]:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return None
        ops = json.loads(body or b"[]")
        return "before" if any(op.get("KV", {}).get("Verb") == "cas" and op["KV"].get("Key") == key
                               for op in ops) else None

    jobs = Jobs()
    with FailingProxy(consul_agent.url) as proxy:
        proxy.fail_once(flags_rewrite)
        old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
        elector = Elector(prefix, identity="e", address=proxy.address, ttl=3)
        try:
            old.run(jobs.job("old", WIND_DOWN), block=False)
            assert old.wait_for_leadership(30)
            wait_until(lambda: "old" in jobs.started, what="old's job")
            elector.start()
            candidacy = elector.candidate(key)
            candidacy.run(jobs.job("e", 0.0), block=False)
            wait_until(lambda: candidacy.leader() == "old", what="the elector to see old lead")
            time.sleep(0.5)
            released_at = time.monotonic()
            requests.put(f"{consul_agent.url}/v1/kv/{key}?release={old.session_id}",
                         timeout=5).raise_for_status()
            wait_until(lambda: "e" in jobs.started, timeout=40, what="the elector's job")
            e_after = round(jobs.started["e"] - released_at, 3)
            wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to return")
            old_end = round(jobs.ended("old") - released_at, 3)
        finally:
            elector.stop()
            old.stop()
    overlap = jobs.worst("old", "e")
    print(f"failed: {proxy.failed}; e's job {e_after}s after the release; old's ended {old_end}s after it; "
          f"overlap {overlap}s")
    assert proxy.failed, "the flags rewrite was never sent: the scene did not happen"
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s: e's job started {e_after}s after the release, "
                            f"old's ended {old_end}s after it")
    assert e_after >= 9.0, e_after


def test_an_elector_whose_acquisition_answer_was_lost_still_holds_the_lock_for_the_last_leaders_lock_delay(
        consul_agent: ConsulAgent, prefix: str, key: str) -> None:
    """The same hole one step earlier: Consul took the lock, the answer
    was lost (a 500 after the request was passed on)."""
    def acquisition(method: str, path: str, body: bytes) -> Optional[str]:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return None
        ops = json.loads(body or b"[]")
        return "after" if any(op.get("KV", {}).get("Verb") == "lock" and op["KV"].get("Key") == key
                              for op in ops) else None

    jobs = Jobs()
    with FailingProxy(consul_agent.url) as proxy:
        old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
        elector = Elector(prefix, identity="e", address=proxy.address, ttl=3)
        try:
            old.run(jobs.job("old", WIND_DOWN), block=False)
            assert old.wait_for_leadership(30)
            wait_until(lambda: "old" in jobs.started, what="old's job")
            elector.start()
            candidacy = elector.candidate(key)
            candidacy.run(jobs.job("e", 0.0), block=False)
            wait_until(lambda: candidacy.leader() == "old", what="the elector to see old lead")
            time.sleep(0.5)
            proxy.fail_once(acquisition)
            released_at = time.monotonic()
            requests.put(f"{consul_agent.url}/v1/kv/{key}?release={old.session_id}",
                         timeout=5).raise_for_status()
            wait_until(lambda: "e" in jobs.started, timeout=40, what="the elector's job")
            e_after = round(jobs.started["e"] - released_at, 3)
            wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to return")
            old_end = round(jobs.ended("old") - released_at, 3)
        finally:
            elector.stop()
            old.stop()
    overlap = jobs.worst("old", "e")
    print(f"failed: {proxy.failed}; e's job {e_after}s after the release; old's ended {old_end}s after it; "
          f"overlap {overlap}s")
    assert proxy.failed, "the acquisition's answer was never lost: the scene did not happen"
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s: e's job started {e_after}s after the release, "
                            f"old's ended {old_end}s after it")
    assert e_after >= 9.0, e_after
