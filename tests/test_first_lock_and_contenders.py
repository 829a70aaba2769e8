"""The key's roster, against a real agent: a new key is led at once; a key
whose last holder crashed, then was deleted, is held for that holder's
lock-delay first; and every participant lists the key's contenders."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import textwrap
from typing import Callable, List

import pytest
import requests
from cli_runs import Runs

from consul_leader import Candidate, Elector, Follower
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, python_env, wait_until


def holds(caplog: pytest.LogCaptureFixture) -> List[str]:
    """The election's "holding it Ns before leading" lines."""
    return [r.getMessage() for r in caplog.records if "before leading" in r.getMessage()]


def test_candidates_started_together_for_a_new_key_lead_it_without_a_lock_delay(
        make_candidate: Callable[..., Candidate], key: str, caplog: pytest.LogCaptureFixture) -> None:
    # ttl 20: a first holder that waited a lock-delay would lead after 20 s.
    with caplog.at_level(logging.INFO, logger="consul_leader"):
        candidates = [make_candidate(key, ttl=20, identity=f"c{i}").start() for i in range(3)]
        wait_until(lambda: any(c.is_leader() for c in candidates), timeout=15, what="a leader")
    assert holds(caplog) == []
    leader = next(c for c in candidates if c.is_leader())
    wait_until(lambda: len(leader.contenders()) == 3, what="every candidate on the roster")
    contenders = leader.contenders()
    assert sorted(c.identity for c in contenders) == ["c0", "c1", "c2"]
    assert [c.identity for c in contenders if c.leading] == [leader.identity]
    assert all(c.alive and c.host and c.pid == os.getpid() and c.since and c.lock_delay == 20 for c in contenders)


CRASHING = textwrap.dedent("""
    import sys, time
    from consul_leader import Candidate
    c = Candidate(sys.argv[1], identity="crashed", address=sys.argv[2], ttl=1, lock_delay=6, lease=0.5)
    c.start()
    assert c.wait_for_leadership(30)
    print("leading", flush=True)
    time.sleep(600)
""")


def test_a_key_deleted_after_its_holder_crashed_is_held_for_that_holders_lock_delay_first(
        make_candidate: Callable[..., Candidate], key: str, consul_agent: ConsulAgent,
        caplog: pytest.LogCaptureFixture) -> None:
    proc = subprocess.Popen([PYTHON, "-c", CRASHING, key, consul_agent.address], env=python_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    url = f"{consul_agent.url}/v1/kv/{key}"
    # Consul frees the key as the session ends; an operator then deletes it:
    # Consul keeps no lock-delay for a key that does not exist.
    wait_until(lambda: not requests.get(url, timeout=5).json()[0].get("Session"), what="the crashed session to end")
    requests.delete(url, timeout=5).raise_for_status()
    with Follower(key, address=consul_agent.address) as follower:
        (left,) = follower.contenders()
        assert (left.identity, left.alive, left.leading, left.lock_delay) == ("crashed", False, False, 6.0)
        with caplog.at_level(logging.INFO, logger="consul_leader"):
            fresh = make_candidate(key, identity="fresh", ttl=1).start()
            assert fresh.wait_for_leadership(30)
        assert len(holds(caplog)) == 1 and "holding it 6.00s" in holds(caplog)[0], holds(caplog)
        # Its lock-delay waited out, the crashed candidate's entry is gone.
        assert [(c.identity, c.leading, c.alive) for c in follower.contenders()] == [("fresh", True, True)]


def test_a_stopped_candidate_leaves_the_roster_and_the_cli_lists_those_left(
        make_candidate: Callable[..., Candidate], key: str, consul_agent: ConsulAgent, cli: Runs) -> None:
    first = make_candidate(key, identity="first").start()
    assert first.wait_for_leadership(30)
    second = make_candidate(key, identity="second").start()
    wait_until(lambda: len(first.contenders()) == 2, what="the second candidate on the roster")
    status = cli.status(key)
    assert [(c["identity"], c["leading"], c["alive"]) for c in status["contenders"]] == \
        [("first", True, True), ("second", False, True)]
    text = cli("status", key).stdout
    assert "contenders:    2" in text and " leading alive" in text and " waiting alive" in text
    first.stop()
    assert second.wait_for_leadership(30)
    assert [c.identity for c in second.contenders()] == ["second"]


def test_an_elector_is_on_each_keys_roster_and_leaves_them_all_as_it_stops(
        key: str, consul_agent: ConsulAgent) -> None:
    prefix = key.rsplit("/", 1)[0] + "/shards"
    names = [f"s{i}" for i in range(70)]  # more than one transaction's 64 operations
    elector = Elector(prefix, identity="e", address=consul_agent.address)
    candidacies = [elector.candidate(name) for name in names]
    with elector:
        wait_until(lambda: all(c.is_leader() for c in candidacies), what="the elector to lead every key")
        assert [(c.identity, c.leading) for c in candidacies[-1].contenders()] == [("e", True)]
    left = requests.get(f"{consul_agent.url}/v1/kv/consul-leader/participants/{prefix}/?recurse", timeout=5)
    assert left.status_code == 404, [e["Key"] for e in left.json()]
