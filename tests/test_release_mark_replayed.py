"""A release by someone else that writes back an old release mark (a
script that puts back the value it read after a clean handover: the
previous holder's mark) is not taken for the leader's own release: a mark
counts only if it names the session the waiter saw hold the key. The next
job waits a lock-delay instead of starting beside the leader's."""

from __future__ import annotations

import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_a_replayed_release_mark_does_not_start_a_second_job(consul_agent: ConsulAgent, key: str) -> None:
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
        body = previous_mark
        requests.put(f"{url}?release={session}", data=body, timeout=5).raise_for_status()
        wait_until(lambda: "b" in jobs.running, timeout=30, what="b's job")
        time.sleep(0.5)
    finally:
        b.stop()
        a.stop()
        z.stop()
    assert jobs.overlaps() == []
