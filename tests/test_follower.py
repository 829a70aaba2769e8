"""Follower: watching who leads without running."""

from __future__ import annotations

import threading
from typing import List, Optional

import pytest

from consul_leader import Follower, NotRunning, leader_changed

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
