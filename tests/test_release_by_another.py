"""A release the holder did not make: anyone who may write the key can
release it for the leader's session (``?release=<session>``, ``consul kv
put -release``). Consul sets no lock-delay for it, and the leader learns of
it only from its watch; the next holder must not take it for the leader's
own clean release, and waits a lock-delay before its work starts."""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import pytest
import requests
from support.jobs import Jobs

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def holder_session(agent: ConsulAgent, key: str) -> str:
    entry = requests.get(f"{agent.url}/v1/kv/{key}", timeout=5).json()[0]
    return str(entry["Session"])


def participants(kind: str, key: str, agent: ConsulAgent) -> Tuple[Any, Any, List[Any]]:
    if kind == "candidate":
        a = Candidate(key, identity="a", address=agent.address)
        b = Candidate(key, identity="b", address=agent.address)
        return a, b, [a, b]
    prefix, name = key.rsplit("/", 1)
    ea = Elector(prefix, identity="a", address=agent.address)
    eb = Elector(prefix, identity="b", address=agent.address)
    return ea.candidate(name), eb.candidate(name), [ea, eb]


@pytest.mark.parametrize("kind", ["candidate", "elector"])
def test_a_release_of_the_leaders_session_by_someone_else_does_not_start_a_second_job_beside_its_job(
        consul_agent: ConsulAgent, key: str, kind: str) -> None:
    jobs = Jobs()
    a, b, owners = participants(kind, key, consul_agent)
    try:
        a.run(jobs.job("a"), block=False)
        assert a.wait_for_leadership(30)
        b.run(jobs.job("b"), block=False)
        time.sleep(0.5)  # b waits for the key
        session = holder_session(consul_agent, key)
        requests.put(f"{consul_agent.url}/v1/kv/{key}?release={session}", timeout=5).raise_for_status()
        wait_until(lambda: b.is_leader() or a.is_leader(), timeout=30, what="a leader again")
        wait_until(lambda: jobs.running, timeout=10, what="the next term's job")
    finally:
        for owner in owners:
            owner.stop()
    assert jobs.overlaps() == []
