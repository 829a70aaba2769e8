"""The HTTP layer against a real agent: guarded writes, error translation,
per-thread connections."""

from __future__ import annotations

import threading

import pytest
import requests

from consul_leader import ConsulUnavailable
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
