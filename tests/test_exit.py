"""A process that ends normally lets go at once: the lock is released and the
session destroyed before it exits, so a deploy hands over in milliseconds."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap

import pytest
import requests

from conftest import PYTHON, python_env

CHILD = textwrap.dedent("""
    import json, signal, sys, time
    from consul_leader import Candidate, stop_on_signals
    from consul_leader.testing import check_id, session_id
    address, key, mode = sys.argv[1:4]
    c = Candidate(key, address=address, ttl=30, lock_delay=30)  # Consul alone would take 30 s or more
    if mode == "sigterm":
        stop_on_signals()
    c.start()
    assert c.wait_for_leadership(30)
    print(json.dumps({"session": session_id(c), "check": check_id(c)}), flush=True)
    if mode == "return":
        sys.exit(0)  # interpreter shutdown with the candidate still running
    time.sleep(60)
""")


@pytest.mark.parametrize("mode, exit_code", [("return", 0), ("sigterm", 128 + signal.SIGTERM)])
def test_process_exit_releases_the_lock_and_destroys_the_session(consul_agent, key, mode, exit_code):
    proc = subprocess.Popen([PYTHON, "-c", CHILD, consul_agent.address, key, mode], stdout=subprocess.PIPE,
                            text=True, env=python_env())
    try:
        line = proc.stdout.readline()
        ids = json.loads(line)
        if mode == "sigterm":
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == exit_code
    finally:
        proc.kill()
    entry = requests.get(f"{consul_agent.url}/v1/kv/{key}", timeout=5).json()[0]
    assert not entry.get("Session"), "the lock is free right after the process ended"
    assert requests.get(f"{consul_agent.url}/v1/session/info/{ids['session']}", timeout=5).json() in (None, [])
    assert ids["check"] not in requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json()
