"""A key deleted under a leader that locks another key with it
(``lock_with``, as ``consul-leader run`` locks ``consul lock``'s
``PREFIX/.lock``): once the term has ended, the other key is released
too, though the session lives on, so that the next candidate can take
both.

Before: the term ended without a release (there was no key to release),
the other key stayed locked by the live session, and every other
candidate that takes it too was refused for as long as the session lived
(a 10-minute chaos run: nobody led for 45 s after a crash, its
``consul-leader run`` supervisors refused with AlsoLockHeld and the
library candidates queued behind one of them in the waiting line)."""

from __future__ import annotations

import requests

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_the_key_locked_with_a_lost_key_is_released_when_the_term_ends(consul_agent: ConsulAgent,
                                                                      key: str) -> None:
    url = consul_agent.url
    other = f"{key}/.lock"
    a = Candidate(key, identity="a", address=consul_agent.address, ttl=1)
    a.lock_with(other)

    def holder(of: str) -> str | None:
        r = requests.get(f"{url}/v1/kv/{of}", timeout=5)
        return None if r.status_code == 404 else r.json()[0].get("Session")

    # Another tool's session: it takes the key the moment it is deleted, in
    # the same transaction, so that a's lock is lost while its session lives.
    foreign = requests.put(f"{url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    try:
        a.start()
        assert a.wait_for_leadership(30)
        assert holder(other) == a.session_id
        requests.put(f"{url}/v1/txn", timeout=5, json=[
            {"KV": {"Verb": "delete", "Key": key}},
            {"KV": {"Verb": "lock", "Key": key, "Value": "", "Session": foreign}}]).raise_for_status()
        wait_until(lambda: not a.is_leader(), timeout=10, what="a's term to end")
        wait_until(lambda: holder(other) is None, timeout=10,
                   what=f"{other!r} released though a's session lives on")
        assert a.running and holder(key) == foreign
        requests.put(f"{url}/v1/kv/{key}?release={foreign}", timeout=5).raise_for_status()
        assert a.wait_for_leadership(30), f"a never led again: {a.health().last_error}"
        assert holder(other) == a.session_id
    finally:
        a.stop()
        requests.put(f"{url}/v1/session/destroy/{foreign}", timeout=5)
