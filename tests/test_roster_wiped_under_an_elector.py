"""An Elector that leads puts its keys' roster entries back when someone
deleted them (``consul kv delete -recurse consul-leader/``): it lists its
prefix's roster (names only) every ten seconds while it leads, so a
fresh candidate that takes a key after it was deleted too still sees that
someone led it, and waits for the Elector's work.

Before the fix only a Candidate did: the roster stayed empty, the new job
started 0.02 s after the key's deletion and the jobs overlapped 1.985 s
(the Elector's lock-delay was 10 s). Found in review.
"""

from __future__ import annotations

import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate, Elector
from consul_leader.roster import roster_prefix
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: How long the Elector's job takes to return once told to stop: well
#: within its margin (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 2.0


def test_an_elector_puts_its_wiped_roster_entry_back_and_a_fresh_candidate_waits_for_its_work(
        consul_agent: ConsulAgent, prefix: str, key: str) -> None:
    url = consul_agent.url

    def listed() -> list:
        r = requests.get(f"{url}/v1/kv/{roster_prefix(key)}?keys", timeout=5)
        return [] if r.status_code == 404 else r.json()

    jobs = Jobs()
    old = Elector(prefix, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
    new = Candidate(key, identity="new", address=consul_agent.address, ttl=3)
    try:
        old.start()
        candidacy = old.candidate(key)
        candidacy.run(jobs.job("old", WIND_DOWN), block=False)
        wait_until(lambda: "old" in jobs.started, what="the Elector's job")
        assert len(listed()) == 1
        requests.delete(f"{url}/v1/kv/consul-leader/?recurse", timeout=5).raise_for_status()
        # The Elector looks at its keys' roster entries every ten seconds.
        wait_until(lambda: len(listed()) == 1, timeout=15, what="the Elector's roster entry to be back")
        back = listed()
        deleted_at = time.monotonic()
        requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status()
        new.run(jobs.job("new", 0.0), block=False)
        wait_until(lambda: "new" in jobs.started, timeout=60, what="the new leader's job")
        started_after = round(jobs.started["new"] - deleted_at, 3)
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="the Elector's job to return")
        old_end = round(jobs.ended("old") - deleted_at, 3)
    finally:
        new.stop()
        old.stop()
    overlap = jobs.worst("old", "new")
    print(f"roster once back: {back}; new job {started_after}s after the deletion; "
          f"old job ended {old_end}s after it; overlap {overlap}s")
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s (new job {started_after}s after the key's "
                            f"deletion, the Elector's ended {old_end}s after it; roster after the wipe: {back})")
    assert started_after >= 9.0, started_after
