"""stop() after a lock was taken but before the hold it needs was decided
(the roster read, the flags rewrite) gives the key up as it does during the
hold: deleted, so that the next holder reads the roster again, not
released nor freed after the stopping candidate's own shorter lock-delay.

Before the fix the lock to give up was recorded only once the hold began:
a stop while the rewrite was on its way let the next candidate lead 4.03 s
after the old leader's key was deleted, beside its job (0.971 s of overlap;
its lock-delay was 10 s). Found in review.
"""

from __future__ import annotations

import json
import time

import requests
from garbling_proxy import HoldingProxy
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until

WIND_DOWN = 5.0


def test_stop_while_the_flags_rewrite_is_on_its_way_still_gives_the_key_up(
        consul_agent: ConsulAgent, key: str) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"

    def flags_rewrite(method: str, path: str, body: bytes) -> bool:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return False
        # The rewrite: the key's index checked and the key locked again, in one transaction.
        verbs = {op.get("KV", {}).get("Verb") for op in json.loads(body or b"[]") if op.get("KV", {}).get("Key") == key}
        return {"check-index", "lock"} <= verbs

    jobs = Jobs()
    with HoldingProxy(consul_agent.url) as proxy:
        proxy.hold = flags_rewrite
        old = Candidate(key, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
        n = Candidate(key, identity="n", address=proxy.address, ttl=3)
        w = Candidate(key, identity="w", address=consul_agent.address, ttl=3)
        try:
            old.run(jobs.job("old", WIND_DOWN), block=False)
            assert old.wait_for_leadership(30)
            wait_until(lambda: "old" in jobs.started, what="old's job")
            deleted_at = time.monotonic()
            requests.delete(url, timeout=5).raise_for_status()
            n.run(jobs.job("n", 0.0), block=False)
            assert proxy.held.wait(10), "n never sent the flags rewrite: the scene did not happen"
            w.run(jobs.job("w", 0.0), block=False)
            wait_until(lambda: w.leader() == "n", what="w to see n hold the key")
            time.sleep(max(0.0, deleted_at + 1.0 - time.monotonic()))
            n.stop()
            proxy.let_go()
            wait_until(lambda: "w" in jobs.started, timeout=30, what="w's job")
            w_after = round(jobs.started["w"] - deleted_at, 2)
            wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="old's job to end")
            old_end = round(jobs.ended("old") - deleted_at, 2)
        finally:
            proxy.let_go()
            w.stop()
            n.stop()
            old.stop()
    print(f"w's job started {w_after}s after the deletion; old's job ended {old_end}s after it; "
          f"overlaps {jobs.overlaps()}")
    assert "n" not in jobs.started, "n led before it was stopped: the scene did not happen"
    assert [o for o in jobs.overlaps() if "old" in o[:2]] == [], \
        f"w's job started {w_after}s after the deletion, old's ended {old_end}s after it: {jobs.overlaps()}"
