"""The roster deleted under a running leader (``consul kv delete -recurse
consul-leader/``) comes back with the leader's next heartbeat: a fresh
candidate that takes the key after it was deleted too still sees that
someone led it, and waits for its work to end."""

from __future__ import annotations

import requests
from support.roster import fresh_candidate_after_the_key_is_deleted

from consul_leader.roster import roster_prefix
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_a_leader_puts_its_wiped_roster_entry_back_and_a_fresh_candidate_waits_for_its_work(
        consul_agent: ConsulAgent, key: str) -> None:
    url = consul_agent.url

    def listed() -> list:
        r = requests.get(f"{url}/v1/kv/{roster_prefix(key)}?keys", timeout=5)
        return [] if r.status_code == 404 else r.json()

    def wipe() -> None:
        requests.delete(f"{url}/v1/kv/consul-leader/?recurse", timeout=5).raise_for_status()
        assert not listed()
        # Within a heartbeat period (ttl=3: one second) the leader's round
        # sees its entry gone and puts it back.
        wait_until(lambda: len(listed()) == 1, timeout=10, what="the leader's roster entry to be back")

    started_after, overlap = fresh_candidate_after_the_key_is_deleted(
        consul_agent.address, key, wipe=wipe,
        delete_key=lambda: requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status(),
        old_kwargs={}, new_kwargs={})
    assert overlap == 0.0, f"the jobs overlapped {overlap}s (new job {started_after}s after the key's deletion)"
    # It waited for the old leader's lock-delay (10 s), not its own (3 s).
    assert started_after >= 9.0, started_after
