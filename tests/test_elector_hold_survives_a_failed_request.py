"""An Elector that must hold a lock for the last leader's longer
lock-delay keeps holding it when a request around the acquisition fails.

It records the hold before the flags rewrite (``Seat.note_hold``), so a
rewrite that fails (one ``500``) leaves the wait in place; and a lock its
own session holds with neither a term nor a wait (an acquisition whose
answer was lost) is judged against what that acquisition saw
(``KeySeat.asked_with``), not against its own lock, which it would follow.

Before the fix, with one 500 on the rewrite: the Elector's job started
0.252 s after the release, beside the old leader's job (4.754 s of
overlap); with a lost acquisition answer, 4.357 s. Found in review.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, Tuple

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
        verbs = {op.get("KV", {}).get("Verb") for op in ops if op.get("KV", {}).get("Key") == key}
        return "before" if {"check-index", "lock"} <= verbs else None

    failed, e_after, old_end, overlap = released_with_one_failure(consul_agent, prefix, key, flags_rewrite)
    print(f"failed: {failed}; e's job {e_after}s after the release; old's ended {old_end}s after it; "
          f"overlap {overlap}s")
    assert failed, "the flags rewrite was never sent: the scene did not happen"
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

    failed, e_after, old_end, overlap = released_with_one_failure(consul_agent, prefix, key, acquisition)
    print(f"failed: {failed}; e's job {e_after}s after the release; old's ended {old_end}s after it; "
          f"overlap {overlap}s")
    assert failed, "the acquisition's answer was never lost: the scene did not happen"
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s: e's job started {e_after}s after the release, "
                            f"old's ended {old_end}s after it")
    assert e_after >= 9.0, e_after


def released_with_one_failure(consul_agent: ConsulAgent, prefix: str, key: str,
                              fail: Callable[[str, str, bytes], Optional[str]]) -> Tuple[list, float, float, float]:
    """old (lock_delay 10 s, its job winds down WIND_DOWN) leads; an Elector
    e (lock_delay 3 s) waits for the same key behind a proxy that fails the
    first request *fail* picks; someone releases the key for old's session.
    Returns what failed, when e's job started and old's ended (seconds after
    the release), and how long the two jobs overlapped."""
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
            proxy.fail_once(fail)
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
    return proxy.failed, e_after, old_end, jobs.worst("old", "e")
