"""An Elector's key offers what a Candidate offers: the same reads, waits
(blocking and asyncio), events, decorators, ``state`` and ``health()``."""

from __future__ import annotations

import asyncio
import inspect

from consul_leader import Candidacy, Candidate, Elector, EventKind
from consul_leader.testing import ConsulAgent

#: What only a Candidate has: it runs its own session and thread, a
#: Candidacy shares its elector's; and ``lock_with``, for ``consul-leader
#: run`` beside ``consul lock``, which runs no Elector.
CANDIDATE_ONLY = {"start", "set_term_hook", "client", "timing", "term_limit", "wait", "heartbeat_stats",
                  "lock_with"}


def public(cls: type) -> set:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


def test_a_candidacy_has_every_per_key_method_of_a_candidate() -> None:
    missing = public(Candidate) - CANDIDATE_ONLY - public(Candidacy)
    assert missing == set()
    for name in public(Candidate) & public(Candidacy):
        ours, theirs = getattr(Candidate, name), getattr(Candidacy, name)
        if callable(ours) and callable(theirs):
            assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name


def test_a_candidacys_state_and_health_follow_its_term(consul_agent: ConsulAgent, prefix: str) -> None:
    elector = Elector(prefix, identity="a", address=consul_agent.address)
    candidacy = elector.candidate("k")
    assert candidacy.state == "new"
    assert not candidacy.health().running
    try:
        elector.start()
        assert asyncio.run(candidacy.wait_for_leadership_async(30))
        assert candidacy.state == "running"
        health = candidacy.health()
        assert health.running and health.is_leader and health.lease_remaining > 0
        events = candidacy.events()
        assert candidacy.resign()
        assert next(events).kind == EventKind.DEPOSED
        assert not candidacy.health().is_leader
    finally:
        elector.stop()
    assert candidacy.state == "stopped"
    assert not candidacy.health().running
