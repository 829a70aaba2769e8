"""``is_leader()`` and ``@leader_only`` asked before any candidate was
started answer as a follower would (False / not called), and the first
such question says why in the log, once a process: a silent False looks
like another process leading. Asked after a candidate ran (a shutdown),
they say nothing."""

from __future__ import annotations

import subprocess
import textwrap

from consul_leader.testing import ConsulAgent

from conftest import PYTHON, python_env

ASK = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from consul_leader import Candidate, is_leader, leader_only

    @leader_only
    def report():
        return "sent"

    if sys.argv[1] == "after-a-candidate":
        c = Candidate(sys.argv[2], address=sys.argv[3], ttl=1).start()
        c.stop()
    assert is_leader() is False and is_leader() is False
    assert report() is None and report() is None
""")


def ask(*args: str) -> str:
    done = subprocess.run([PYTHON, "-c", ASK, *args], env=python_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_asking_before_any_candidate_warns_once() -> None:
    warnings = [line for line in ask("before").splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings
    assert "consul_leader.is_leader() asked before any candidate was started" in warnings[0]
    assert "start a Candidate first" in warnings[0]


def test_asking_after_a_candidate_ran_says_nothing(consul_agent: ConsulAgent, key: str) -> None:
    said = ask("after-a-candidate", key, consul_agent.address)
    assert "before any candidate was started" not in said
