"""Review: a release mark forged to name the leader's own session.

A third party's ``?release=`` of the leader's session whose body is exactly
the mark the leader's own release would write (``consul-leader:released:``
and the leader's session ID) cannot be told from the leader's release by
what Consul shows: the next job starts at once, beside the leader's (0.2 s
on the review's run). A replayed mark of an earlier holder is refused now
(tests/test_release_mark_replayed.py); this one needs a secret that only the
holder knows until its release: a commitment written with the lock (its
hash, in the acquisition's transaction) and revealed in the mark. Until
then, docs/security.rst says that consul-leader trusts every token that may
write the election key."""

from __future__ import annotations

import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_a_forged_release_mark_naming_the_leaders_session_does_not_start_a_second_job(
        consul_agent: ConsulAgent, key: str) -> None:
    url = f"{consul_agent.url}/v1/kv/{key}"
    jobs = Jobs()
    z = Candidate(key, identity="z", address=consul_agent.address)
    a = Candidate(key, identity="a", address=consul_agent.address)
    b = Candidate(key, identity="b", address=consul_agent.address)
    try:
        # z leads first and hands over cleanly: the key then holds z's mark.
        z.start()
        assert z.wait_for_leadership(30)
        a.run(jobs.job("a"), block=False)
        wait_until(lambda: a.leader() == "z", what="a to see z lead")
        z.stop()
        assert a.wait_for_leadership(30)
        b.run(jobs.job("b"), block=False)
        wait_until(lambda: b.leader() == "a", what="b to see a lead")
        time.sleep(0.5)
        session = requests.get(url, timeout=5).json()[0]["Session"]
        body = b"consul-leader:released:" + session.encode()
        requests.put(f"{url}?release={session}", data=body, timeout=5).raise_for_status()
        wait_until(lambda: "b" in jobs.running, timeout=30, what="b's job")
        time.sleep(0.5)
    finally:
        b.stop()
        a.stop()
        z.stop()
    assert jobs.overlaps() == []
