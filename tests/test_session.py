"""Session: the Consul session, its check and the lease, on a real agent."""

from __future__ import annotations

import time

import pytest
import requests

from consul_leader import SessionLost, Timing
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.session import Session


@pytest.fixture
def client(consul_agent):
    return ConsulClient(ConsulConfig.from_args(address=consul_agent.address))


@pytest.fixture
def session(client):
    s = Session(client, Timing.from_ttl(3), "test session")
    s.open()
    yield s
    s.close()


def test_session_is_bound_to_serf_health_and_its_own_passing_check(session, consul_agent):
    info = requests.get(f"{consul_agent.url}/v1/session/info/{session.id}", timeout=5).json()[0]
    assert set(info["Checks"] if "Checks" in info else info["NodeChecks"]) >= {"serfHealth", session.check_id}
    assert info["Behavior"] == "release" and info["TTL"] == "10s" and info["LockDelay"] == 3_000_000_000
    checks = requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json()
    assert checks[session.check_id]["Status"] == "passing"


def test_the_lease_runs_from_the_start_of_the_last_good_round(client):
    now = [100.0]
    s = Session(client, Timing.from_ttl(3), "clocked", clock=lambda: now[0])
    s.open()
    try:
        assert s.lease_deadline == 102.5
        now[0] = 101.0
        assert s.beat() is True and s.lease_deadline == 103.5
        now[0] = 103.6
        assert not s.lease_valid()
    finally:
        s.close()


def test_a_leader_round_extends_the_lease_only_while_the_lock_is_still_held(session, client, key):
    assert client.acquire(key, b"me", session.id)
    session.set_leading(key, time.monotonic())
    assert session.beat() is True
    client.delete_key(key)  # heartbeats still succeed, but the lock is gone
    time.sleep(0.2)  # a round of the heartbeat thread that read the key before may still land
    before = session.lease_deadline
    assert session.beat() is False
    time.sleep(1.2)  # the heartbeat thread's own rounds (every second while leading)
    assert session.lease_deadline == before, "the lease must not grow once the key is gone"


def test_a_destroyed_session_is_reported_lost(client, consul_agent):
    now = [100.0]
    s = Session(client, Timing.from_ttl(3), "destroyed", clock=lambda: now[0])
    s.open()
    try:
        requests.put(f"{consul_agent.url}/v1/session/destroy/{s.id}", timeout=5).raise_for_status()
        now[0] += 4  # the next round renews
        with pytest.raises(SessionLost):
            s.beat()
    finally:
        s.close()


def test_a_destroyed_session_ends_the_leaders_lease_growth_at_once(session, client, consul_agent, key):
    assert client.acquire(key, b"me", session.id)
    session.set_leading(key, time.monotonic())
    assert session.beat() is True
    requests.put(f"{consul_agent.url}/v1/session/destroy/{session.id}", timeout=5).raise_for_status()
    time.sleep(0.2)  # a round of the heartbeat thread that read the key before may still land
    before = session.lease_deadline
    assert session.beat() is False, "the key no longer shows this session"
    time.sleep(1.2)
    assert session.lease_deadline == before


def test_the_heartbeat_thread_notices_a_lost_session(client, consul_agent):
    lost = []
    s = Session(client, Timing.from_ttl(1), "short", on_lost=lost.append)
    s.open()
    try:
        s.set_leading("unused/key")  # the leader's fast rate
        requests.put(f"{consul_agent.url}/v1/session/destroy/{s.id}", timeout=5).raise_for_status()
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lost == [s] and s.lost.is_set() and not s.lease_valid()
    finally:
        s.close()


def test_close_destroys_the_session_and_deregisters_the_check(client, consul_agent):
    s = Session(client, Timing.from_ttl(3), "closing")
    s.open()
    s.close()
    s.close()  # idempotent
    assert requests.get(f"{consul_agent.url}/v1/session/info/{s.id}", timeout=5).json() in (None, [])
    assert s.check_id not in requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json()


def test_a_fractional_lock_delay_reaches_consul_exactly(client, consul_agent):
    s = Session(client, Timing.from_ttl(3, lock_delay=2.8), "fractional")
    s.open()
    try:
        info = requests.get(f"{consul_agent.url}/v1/session/info/{s.id}", timeout=5).json()[0]
        assert info["LockDelay"] == 2_800_000_000 and info["TTL"] == "10s"
    finally:
        s.close()


def test_a_job_whose_lease_ran_out_before_it_could_start_is_not_started():
    # Pure timing logic (no agent needed): the process was paused between
    # the term's start and the job thread's first step, and the lease ran
    # out meanwhile; the job must not start then (another candidate may be
    # working already). Found by the Elector's chaos run: a job started 4.8 s
    # after its term, when its process resumed from SIGSTOP.
    import threading

    from consul_leader.job import JobRunner

    called = threading.Event()
    returned: list = []
    runner = JobRunner(lambda stop: called.set(), lambda: -0.5, "test", on_return=returned.append,
                       on_lease_end=lambda: None)
    runner.start()
    runner.join()
    assert not called.is_set() and returned == []

    live = JobRunner(lambda stop: called.set(), lambda: 5.0, "test", on_return=returned.append,
                     on_lease_end=lambda: None)
    live.start()
    live.join()
    assert called.is_set() and returned == [True]
