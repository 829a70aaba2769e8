"""Observability: Candidate.health(), the Prometheus collector and the
structured transition logs, with real candidates and a real registry."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Dict, Optional

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from consul_leader import Candidate, metrics
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def sampler(registries: Dict[str, CollectorRegistry], key: str) -> Callable[..., Optional[float]]:
    """Samples of the candidate *identity* (each in a registry of its own, as
    each in a process of its own)."""
    def sample(name: str, identity: str, **labels: str) -> Optional[float]:
        return registries[identity].get_sample_value(name, {"key": key, **labels})
    return sample


def test_metrics_follow_a_real_election(key: str, make_candidate) -> None:
    registries = {"a": CollectorRegistry(), "b": CollectorRegistry()}
    sample = sampler(registries, key)
    a = make_candidate(key, identity="a", ttl=1)
    b = make_candidate(key, identity="b", ttl=1)
    metrics.register(a, registries["a"])
    metrics.register(b, registries["b"])
    a.start()
    assert a.wait_for_leadership(30)
    b.start()
    wait_until(lambda: b.leader() == "a", what="b to see a leading")
    assert sample("consul_leader_is_leader", "a") == 1.0
    assert sample("consul_leader_is_leader", "b") == 0.0
    assert registries["a"].get_sample_value("leader_election_master_status", {"name": key}) == 1.0  # client-go's
    assert registries["b"].get_sample_value("leader_election_master_status", {"name": key}) == 0.0
    # Who the series belong to.
    assert registries["a"].get_sample_value("consul_leader_candidate_info", {"key": key, "identity": "a"}) == 1.0
    assert 0 < sample("consul_leader_lease_remaining_seconds", "a") <= a.timing.lease  # type: ignore[operator]
    assert sample("consul_leader_lease_remaining_seconds", "b") == 0.0
    assert sample("consul_leader_transitions_total", "a", kind="elected") == 1.0
    assert sample("consul_leader_transitions_total", "a", kind="deposed") == 0.0
    wait_until(lambda: (sample("consul_leader_heartbeat_seconds_count", "a") or 0) >= 3, what="heartbeats")
    assert sample("consul_leader_heartbeat_seconds_sum", "a") > 0  # type: ignore[operator]
    assert sample("consul_leader_heartbeat_failures_total", "a") == 0.0
    assert sample("consul_leader_healthy", "a") == 1.0 and sample("consul_leader_healthy", "b") == 1.0

    a.stop()
    assert b.wait_for_leadership(30)
    assert sample("consul_leader_transitions_total", "a", kind="deposed") == 1.0
    assert sample("consul_leader_is_leader", "a") == 0.0
    assert sample("consul_leader_healthy", "a") == 0.0
    assert sample("consul_leader_is_leader", "b") == 1.0
    assert sample("consul_leader_transitions_total", "b", kind="elected") == 1.0
    text = generate_latest(registries["a"]).decode()
    assert "# TYPE consul_leader_heartbeat_seconds summary" in text
    # No label that changes with each process (the default identity is
    # hostname:pid): a restart continues the same series.
    for line in text.splitlines():
        if line.startswith("consul_leader_") and not line.startswith("consul_leader_candidate_info"):
            assert "identity=" not in line, line


def test_candidates_of_several_keys_share_each_family(prefix: str, make_candidate) -> None:
    registry = CollectorRegistry()
    for name in ("x", "y"):
        metrics.register(make_candidate(f"{prefix}/{name}"), registry)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE consul_leader_is_leader gauge") == 1
    assert text.count("consul_leader_is_leader{") == 2


def test_register_is_idempotent_and_unregister_removes(key: str, make_candidate) -> None:
    registry = CollectorRegistry()
    c = make_candidate(key, identity="c")
    metrics.register(c, registry)
    metrics.register(c, registry)
    assert generate_latest(registry).decode().count(f'consul_leader_is_leader{{key="{key}"}}') == 1
    assert metrics.unregister(c, registry)
    assert not metrics.unregister(c, registry)
    assert "consul_leader_is_leader{" not in generate_latest(registry).decode()
    metrics.register(c, registry)  # and back, into the same registry
    assert sampler({"c": registry}, key)("consul_leader_is_leader", "c") == 0.0


def test_without_prometheus_client_the_error_names_the_extra(key: str, make_candidate,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what `import` finds when not installed
    with pytest.raises(ImportError, match=r"pip install 'consul-leader\[prometheus\]'"):
        metrics.register(make_candidate(key))


def test_health_goes_bad_when_consul_is_gone_and_recovers(key: str) -> None:
    registry = CollectorRegistry()
    with ConsulAgent() as agent:
        c = Candidate(key, identity="h", address=agent.address, ttl=1, timeout=1)
        metrics.register(c, registry)
        assert not c.health().ok  # not started: no heartbeat yet
        try:
            c.start()
            assert c.wait_for_leadership(30)
            health = c.health()
            assert health.ok and health.running and health.is_leader and health.lease_remaining > 0
            assert health.last_heartbeat_age is not None and health.last_heartbeat_age < c.timing.check_ttl

            agent.stop()
            wait_until(lambda: not c.health().ok, what="health to turn bad")
            wait_until(lambda: c.health().heartbeat_failures > 0 and c.health().last_error, what="failures")
            health = c.health()
            assert health.running and not health.is_leader and health.lease_remaining == 0.0
            assert health.last_heartbeat_age >= c.timing.check_ttl  # type: ignore[operator]
            sample = sampler({"h": registry}, key)
            assert sample("consul_leader_healthy", "h") == 0.0
            assert sample("consul_leader_heartbeat_failures_total", "h") >= 1  # type: ignore[operator]

            agent.start()
            assert c.wait_for_leadership(60)
            wait_until(lambda: c.health().ok, what="health to recover")
        finally:
            c.stop()
        health = c.health()
        assert not health.ok and not health.running and not health.is_leader


def test_transitions_are_logged_with_structured_fields(key: str, make_candidate,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consul_leader")
    c = make_candidate(key, identity="logged")
    c.start()
    assert c.wait_for_leadership(30)
    token = c.fencing_token
    assert c.resign()
    wait_until(lambda: any(getattr(r, "consul_leader_event", None) == "deposed" for r in caplog.records),
             what="the deposed record")
    events: Dict[str, logging.LogRecord] = {}
    for record in caplog.records:
        events.setdefault(getattr(record, "consul_leader_event", ""), record)
    for name in ("started", "elected", "deposed"):
        assert events[name].key == key and events[name].identity == "logged"  # type: ignore[attr-defined]
    assert events["elected"].fencing_token == token  # type: ignore[attr-defined]
    assert events["deposed"].fencing_token == token  # type: ignore[attr-defined]
    assert events["deposed"].reason == "resigned"  # type: ignore[attr-defined]
