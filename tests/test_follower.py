"""Follower: watching who leads without running."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import List, Optional

import pytest

from consul_leader import ConsulUnavailable, Follower, NotRunning, leader_changed
from consul_leader.testing import ConsulAgent, free_ports

from conftest import wait_until


def test_follower_reports_the_leader_and_each_change(make_candidate, key, consul_agent):
    follower = Follower(key, address=consul_agent.address).start()
    changes: List[Optional[str]] = []
    signalled: List[Optional[str]] = []
    leader_changed.connect(lambda s, leader: signalled.append(leader), sender=follower, weak=False)

    def consume() -> None:
        for leader in follower.changes():
            changes.append(leader)

    t = threading.Thread(target=consume)
    t.start()
    try:
        assert follower.wait_for_leader(10) is None
        a = make_candidate(key).start()
        assert a.wait_for_leadership(30)
        wait_until(lambda: follower.leader() == a.identity, what="follower sees a")
        info = follower.info()
        assert info.identity == a.identity and info.modify_index == a.fencing_token and info.since
        b = make_candidate(key).start()
        a.stop()
        wait_until(lambda: follower.leader() == b.identity, what="follower sees b")
    finally:
        follower.stop()
        t.join(10)
    assert not t.is_alive(), "changes() ends when the follower stops"
    assert changes[0] is None and changes[-1] == b.identity and a.identity in changes
    assert signalled[-1] == b.identity and a.identity in signalled


def test_wait_for_leader_needs_start(consul_agent, key):
    with pytest.raises(NotRunning):
        Follower(key, address=consul_agent.address).wait_for_leader(0.1)


def test_follower_as_context_manager_stops_its_thread(consul_agent, key):
    with Follower(key, address=consul_agent.address) as f:
        f.wait_for_leader(10)
        assert f.running
    assert not f.running


def test_wait_for_leader_raises_consul_unavailable_when_consul_cannot_be_asked_for_the_whole_wait(key):
    # Nothing listens there: "cannot reach Consul", which must not read as
    # "nobody leads" (None).
    (port,) = free_ports(1)
    with Follower(key, address=f"127.0.0.1:{port}", timeout=1) as follower:
        started = time.monotonic()
        with pytest.raises(ConsulUnavailable) as info:
            follower.wait_for_leader(1.5)
        assert time.monotonic() - started >= 1.5, "it waits the whole timeout for Consul to answer"
        assert info.value.__cause__ is not None, "the last error is the cause"
        assert f"127.0.0.1:{port}" in str(info.value) and key in str(info.value)
        with pytest.raises(ConsulUnavailable):
            asyncio.run(follower.wait_for_leader_async(0.2))
        assert follower.wait_for_first_read(0) is False
        assert follower.leader() is None and follower.running, "it keeps trying in the background"


def test_wait_for_leader_answers_when_a_stopped_agent_comes_back_within_the_wait(key):
    with ConsulAgent() as agent:
        agent.stop()
        with Follower(key, address=agent.address, timeout=1) as follower:
            with pytest.raises(ConsulUnavailable):
                follower.wait_for_leader(0.5)
            threading.Timer(0.5, agent.start).start()
            assert follower.wait_for_leader(60) is None, "Consul answered: nobody leads"
            assert follower.wait_for_leader(0) is None, "answered once, it answers at once"


def test_wait_for_leader_after_stop_without_a_read_raises_not_running(key):
    (port,) = free_ports(1)
    follower = Follower(key, address=f"127.0.0.1:{port}", timeout=1).start()
    follower.stop()
    started = time.monotonic()
    with pytest.raises(NotRunning):
        follower.wait_for_leader(30)
    assert time.monotonic() - started < 5
