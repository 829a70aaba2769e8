"""Review: the roster and the key wiped together under a leader.

3c7755a made a leader's heartbeat put its roster entry back when someone
deleted it (``Session.beat``: ``locked_by([key, entry])``, then
``_rejoin_roster``), so that a fresh candidate that takes the key after it
was deleted still sees that someone led it. But the entry is put back only
by a round that still finds the key held (``if held:``), and only while the
term leads (``_end_term`` calls ``set_leading(None)`` before it joins the
job). When both go at once (``consul kv delete -recurse`` of the whole
store, a restore of an empty snapshot, a script that cleans up both
folders in one transaction), the leader's watch sees the key gone, its
term ends, nobody ever puts the entry back, and its job winds down with
no trace of it in Consul. A fresh candidate takes LockIndex 1, reads a
roster that shows only itself (``nobody_else``) and leads at once.

Measured (Consul 1.8.7, 2 shared cores; old: lock_delay 10 s, its job
winds down 2 s, within its margin of 7.5 s): the new job started 0.018 s
after the wipe, old's ended 2.004 s after it: the jobs overlapped 1.986 s.
Once old's job had returned the roster held one entry, the new leader's:
old's never came back.

Proposed fix: a term that lost its key keeps (or puts back) its roster
entry until its work is over: on ``LOCK_LOST`` with the key gone, put the
led entry back at once (``put_locked``, before joining the job), and have
the heartbeat keep re-putting it while the term is JOINING, not only while
a round finds the key held; the entry is the only thing a later first
holder can see. (A candidate that reads the roster between the wipe and
the re-put still races it; a first holder that finds only itself could
read the roster again one heartbeat later before leading, which costs a
new key one heartbeat instead of one round trip.)
"""

from __future__ import annotations

import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.roster import ROSTER_ROOT, roster_prefix
from consul_leader.testing import ConsulAgent

from conftest import wait_until

WIND_DOWN = 2.0


def test_a_fresh_candidate_waits_for_the_work_of_a_leader_whose_key_and_roster_were_wiped_together(
        consul_agent: ConsulAgent, key: str) -> None:
    url = consul_agent.url

    def listed() -> list:
        r = requests.get(f"{url}/v1/kv/{roster_prefix(key)}?keys", timeout=5)
        return [] if r.status_code == 404 else r.json()

    jobs = Jobs()
    old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
    new = Candidate(key, identity="new", address=consul_agent.address, ttl=3)
    try:
        old.run(jobs.job("old", WIND_DOWN), block=False)
        assert old.wait_for_leadership(30)
        wait_until(lambda: "old" in jobs.started, what="old's job")
        assert len(listed()) == 1
        wiped_at = time.monotonic()
        # Both in one transaction: the key and every roster.
        requests.put(f"{url}/v1/txn", json=[{"KV": {"Verb": "delete-tree", "Key": ROSTER_ROOT}},
                                            {"KV": {"Verb": "delete", "Key": key}}],
                     timeout=5).raise_for_status()
        new.run(jobs.job("new", 0.0), block=False)
        wait_until(lambda: "new" in jobs.started, timeout=60, what="the new leader's job")
        started_after = round(jobs.started["new"] - wiped_at, 3)
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to return")
        old_end = round(jobs.ended("old") - wiped_at, 3)
        later = listed()
    finally:
        new.stop()
        old.stop()
    overlap = jobs.worst("old", "new")
    print(f"new job {started_after}s after the wipe; old's ended {old_end}s after it; overlap {overlap}s; "
          f"roster then: {later}")
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s: the new job started {started_after}s after the "
                            f"wipe, old's ended {old_end}s after it")
