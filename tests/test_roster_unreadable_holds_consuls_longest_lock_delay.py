"""Fixed after review; what went wrong before:

a roster that could not be read is taken to need only the reader's
own lock-delay.

``hold_with_roster`` is asked because no Consul lock-delay covered the lock
(here: LockIndex 1, the key deleted under a leader). ``Roster.read``
answers None when the read fails, and ``hold_for_others(None, ...)`` then
holds *own*: the reader's lock-delay (3 s), or the longest it saw in the
flags, which a fresh candidate never saw (the key was deleted with them).
The roster was the only place that said the old leader needs 10 s.

Scene: "old" (ttl 3 s, lock_delay 10 s, so its job may wind down for up
to 7.5 s after its lease; this one takes 5 s) leads; the key is deleted; a
fresh candidate "new" starts, and the one GET of the roster it makes after
its acquisition fails once (Consul's ``500 No cluster leader``, as in a
Raft election: ``FailingProxy``).

Measured on the review's run (Consul 1.8.7, 2 cores): new's job started
3.25 s after the deletion, old's ended 5.01 s after it: the jobs overlapped
1.76 s. With the roster read, new holds 10 s (see
tests/findings/test_review_roster_blind_spot.py's control).

Suggested fix: a roster that cannot be read proves nothing, not "nobody
needs more than me": retry the read within the hold (it is a read, cheap),
and if it still fails hold Consul's largest lock-delay (60 s, as
``_UNKNOWN_DELAY`` already does for an entry that does not say its own), or
the longest ``LockDelay`` among the live sessions named for the key.
"""

from __future__ import annotations

import time

import requests
from garbling_proxy import FailingProxy
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_a_roster_read_that_fails_once_holds_only_the_readers_own_lock_delay(
        consul_agent: ConsulAgent, key: str) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    jobs = Jobs()
    with FailingProxy(consul_agent.url) as proxy:
        old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
        new = Candidate(key, identity="new", address=proxy.address, ttl=3)
        try:
            old.run(jobs.job("old", 5.0), block=False)
            assert old.wait_for_leadership(30)
            wait_until(lambda: "old" in jobs.started, what="old's job")
            proxy.fail_once(lambda method, path, body: "before" if method == "GET" and
                            "/v1/kv/consul-leader/participants/" in path and "recurse" in path else None)
            deleted_at = time.monotonic()
            requests.delete(url, timeout=5).raise_for_status()
            new.run(jobs.job("new", 0.0), block=False)
            wait_until(lambda: "new" in jobs.started, timeout=30, what="new's job")
            new_after = round(jobs.started["new"] - deleted_at, 2)
            wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to end")
            old_end = round(jobs.ended("old") - deleted_at, 2)
        finally:
            new.stop()
            old.stop()
        assert proxy.failed, "the roster read went through: the scene did not happen"
    print(f"new's job started {new_after}s after the deletion; old's ended {old_end}s after it; "
          f"overlaps {jobs.overlaps()}")
    assert [o for o in jobs.overlaps() if "old" in o[:2]] == [], \
        f"new's job started {new_after}s after the deletion, old's ended {old_end}s after it: {jobs.overlaps()}"
