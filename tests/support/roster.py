"""Scenes on a key's roster (see consul_leader.roster)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable, Tuple

import requests

from consul_leader import Candidate
from consul_leader.roster import roster_prefix

from .jobs import Jobs
from conftest import wait_until


def left_by_a_crash(url: str, key: str, lock_delay: float) -> str:
    """Write the roster entry that a candidate which led *key* and crashed
    leaves behind (free, its session gone), so that the key's next first
    holder must wait *lock_delay*. Returns the entry's key."""
    entry = roster_prefix(key) + str(uuid.uuid4())
    body = {"identity": "crashed", "host": "elsewhere", "pid": 1, "since": 0, "lock_delay": lock_delay, "led": True}
    requests.put(f"{url}/v1/kv/{entry}", data=json.dumps(body), timeout=5).raise_for_status()
    return entry


#: How long the old leader's job takes to return once told to stop: well
#: within its margin (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 2.0


def fresh_candidate_after_the_key_is_deleted(address: str, key: str, wipe: Callable[[], None],
                                             delete_key: Callable[[], None], old_kwargs: dict,
                                             new_kwargs: dict) -> Tuple[float, float]:
    """An "old" leader (lock-delay 10 s) works; *wipe* runs, then
    *delete_key*, then a "new" candidate starts. Returns how long after the
    deletion the new job started, and how long the two jobs overlapped."""
    jobs = Jobs()
    old = Candidate(key, identity="old", address=address, ttl=3, lock_delay=10, **old_kwargs)
    new = Candidate(key, identity="new", address=address, ttl=3, **new_kwargs)
    try:
        old.run(jobs.job("old", WIND_DOWN), block=False)
        assert old.wait_for_leadership(30)
        wait_until(lambda: "old" in jobs.started, what="the old leader's job")
        wipe()
        time.sleep(0.5)
        deleted_at = time.monotonic()
        delete_key()
        new.run(jobs.job("new", 0.0), block=False)
        wait_until(lambda: "new" in jobs.started, timeout=60, what="the new leader's job")
        started_after = jobs.started["new"] - deleted_at
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="the old job to return")
    finally:
        new.stop()
        old.stop()
    return round(started_after, 3), jobs.worst("old", "new")
