"""Review: F1's release mark is taken on its format alone.

``released_by_holder`` accepts any free entry whose value *starts with*
``consul-leader:released:``: it does not check that the session it names is
the session the waiter saw hold the key. A third party's ``?release=`` of
the leader's session whose body has that format (a script that writes back
the value it saw last, after a clean handover: the previous holder's mark)
is followed at once, and the next job starts while the leader's still runs.
The second case could be told apart (the mark names a session that did not
hold the key when the waiter looked); the first cannot, from the value."""

from __future__ import annotations

import time

import pytest
import requests
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


@pytest.mark.parametrize("named", ["previous-holder", "the-leader"])
def test_a_release_by_someone_else_in_the_release_marks_format_does_not_start_a_second_job(
        consul_agent: ConsulAgent, key: str, named: str) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    jobs = Jobs()
    z = Candidate(key, identity="z", address=consul_agent.address)
    a = Candidate(key, identity="a", address=consul_agent.address)
    b = Candidate(key, identity="b", address=consul_agent.address)
    try:
        # z leads first and hands over cleanly: the key then holds z's mark.
        z.start()
        assert z.wait_for_leadership(30)
        z_session = requests.get(url, timeout=5).json()[0]["Session"]
        a.run(jobs.job("a"), block=False)
        wait_until(lambda: a.leader() == "z", what="a to see z lead")
        z.stop()
        assert a.wait_for_leadership(30)
        previous_mark = b"consul-leader:released:" + z_session.encode()  # the value z's release left
        b.run(jobs.job("b"), block=False)
        wait_until(lambda: b.leader() == "a", what="b to see a lead")
        time.sleep(0.5)
        session = requests.get(url, timeout=5).json()[0]["Session"]
        body = previous_mark if named == "previous-holder" else b"consul-leader:released:" + session.encode()
        requests.put(f"{url}?release={session}", data=body, timeout=5).raise_for_status()
        wait_until(lambda: "b" in jobs.running, timeout=30, what="b's job")
        time.sleep(0.5)
    finally:
        b.stop()
        a.stop()
        z.stop()
    assert jobs.overlaps() == []
