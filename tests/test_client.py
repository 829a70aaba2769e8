"""The HTTP layer against a real agent: guarded writes, error translation,
per-thread connections."""

from __future__ import annotations

import threading
import uuid

import pytest
import requests

from consul_leader import ConsulUnavailable, SessionLost
from consul_leader.client import ConsulClient, ConsulConfig, interrupt
from consul_leader.testing import free_ports


@pytest.fixture
def client(consul_agent):
    return ConsulClient(ConsulConfig.from_args(address=consul_agent.address))


def test_put_if_index_writes_only_while_the_guard_key_is_unchanged(client, prefix):
    guard, target = f"{prefix}/guard", f"{prefix}/target"
    client.put_key(guard, b"term 1")
    index, entry = client.get_key(guard)
    token = entry["ModifyIndex"]
    assert client.put_if_index(guard, token, target, b"first") is True
    assert client.get_key(target)[1]["Value"] == b"first"
    client.put_key(guard, b"term 2")  # a later term
    assert client.put_if_index(guard, token, target, b"stale") is False
    assert client.get_key(target)[1]["Value"] == b"first"


def test_an_unreachable_agent_is_a_consul_unavailable_naming_the_address():
    port = free_ports(1)[0]
    client = ConsulClient(ConsulConfig.from_args(address=f"127.0.0.1:{port}", timeout=1))
    with pytest.raises(ConsulUnavailable, match=f"127.0.0.1:{port}"):
        client.get_key("anything")


def test_each_thread_has_its_own_connection(client):
    sessions = []

    def grab() -> None:
        sessions.append(client.http_session())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grab()
    assert len({id(s) for s in sessions}) == 4
    assert all(isinstance(s, requests.Session) for s in sessions)


def test_interrupt_ends_a_blocking_query_at_once(client, prefix):
    key = f"{prefix}/watched"
    client.put_key(key, b"x")
    index, _ = client.get_key(key)
    outcome = []

    def block() -> None:
        try:
            client.get_key(key, index=index, wait=60)
            outcome.append("returned")
        except ConsulUnavailable:
            outcome.append("interrupted")

    t = threading.Thread(target=block)
    t.start()
    t.join(0.5)
    assert t.is_alive(), "the query blocks"
    interrupt(t)
    t.join(10)
    assert not t.is_alive() and outcome == ["interrupted"]


def test_errors_carry_the_operation_the_key_the_status_and_the_cause(client):
    port = free_ports(1)[0]
    dead = ConsulClient(ConsulConfig.from_args(address=f"127.0.0.1:{port}", timeout=1))
    with pytest.raises(ConsulUnavailable) as info:
        dead.get_key("a/b")
    assert (info.value.operation, info.value.key, info.value.status) == ("read key", "a/b", None)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    with pytest.raises(SessionLost) as lost:
        client.renew_session(str(uuid.uuid4()))
    assert lost.value.operation == "renew session" and lost.value.status == 404
    assert lost.value.__cause__ is not None
    with pytest.raises(SessionLost) as gone:  # refused inside the transaction: translated once
        client.acquire("a/b", b"x", str(uuid.uuid4()))
    assert (gone.value.operation, gone.value.key, gone.value.status) == ("acquire lock", "a/b", 409)


def test_a_follower_refuses_consul_and_address_together_as_a_candidate_does(consul_agent):
    import consul

    from consul_leader import Candidate, ConfigurationError, Follower

    existing = consul.Consul(host="127.0.0.1", port=8500)
    for cls in (Candidate, Follower):
        with pytest.raises(ConfigurationError, match="give either consul= or address, not both"):
            cls("a/b", consul=existing, address=consul_agent.address)


def test_a_follower_takes_a_timeout_and_the_token_file_is_read_in_one_place(consul_agent, tmp_path):
    from consul_leader import ConfigurationError, Follower

    token = tmp_path / "token"
    token.write_text("c0ffee00-0000-0000-0000-000000000000\n")
    config = ConsulConfig.resolve(address=consul_agent.address, token_file=str(token), timeout=2.5)
    assert config.token == "c0ffee00-0000-0000-0000-000000000000" and config.timeout == 2.5
    assert Follower("a/b", address=consul_agent.address, timeout=2.5).client.config.timeout == 2.5
    with pytest.raises(ConfigurationError, match="token_file='/nonexistent' cannot be read"):
        ConsulConfig.resolve(token_file="/nonexistent")
