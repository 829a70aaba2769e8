"""Fixed after review; what went wrong before: a leader whose separate
roster join got lost (the answer lost after Consul applied it) took its
lock without its entry marked ``led``, and a fresh candidate, after the key
was deleted, saw nobody who led and started its job beside the leader's.
Every lock is now taken in one transaction with its holder's entry."""

from __future__ import annotations

from typing import Iterator

import pytest
import requests
from garbling_proxy import FailingProxy
from security_helpers import acl_agent
from support.roster import fresh_candidate_after_the_key_is_deleted

from consul_leader.testing import ConsulAgent


@pytest.fixture(scope="module")
def secured() -> Iterator[ConsulAgent]:
    with acl_agent() as agent:
        yield agent


def test_a_leader_whose_roster_join_answer_was_lost_is_overlapped_by_a_fresh_candidate_after_its_key_is_deleted(
        consul_agent: ConsulAgent, key: str) -> None:
    """No operator, no ACL: the answer to the leader's roster join is lost
    (Consul wrote the entry; a proxy, or a timeout behind a slow agent,
    lost the answer). ``Roster.join`` returns False, the same round's
    acquisition goes on without the entry (``with_lock()`` is empty), and
    the leader leads with an entry that is alive but says ``led: false``
    for its whole term: the fresh candidate's roster proves "nobody else"."""
    url = consul_agent.url
    with FailingProxy(url) as proxy:
        proxy.fail_once(lambda method, path, body: "after" if method == "PUT" and
                        "/v1/kv/consul-leader/participants/" in path and "acquire=" in path else None)
        started_after, overlap = fresh_candidate_after_the_key_is_deleted(
            proxy.address, key, wipe=lambda: None,
            delete_key=lambda: requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status(),
            old_kwargs={}, new_kwargs={})
        assert proxy.failed, "the roster join went through: the scene did not happen"
    print(f"lost join: new job started {started_after}s after the deletion; overlap {overlap}s")
    assert overlap == 0.0, f"the jobs overlapped {overlap}s (new job {started_after}s after the key's deletion)"
