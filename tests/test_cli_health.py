"""``consul-leader run --health-port``: Kubernetes probes answered by real
supervisors over real HTTP."""

from __future__ import annotations

import signal
from typing import Tuple

import requests
from cli_runs import Runs

from consul_leader.testing import free_ports

from conftest import wait_until


def probe(port: int, path: str) -> Tuple[int, dict]:
    try:
        r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except requests.ConnectionError:
        return 0, {}
    return r.status_code, r.json()


def test_readyz_answers_200_on_the_leader_only_and_livez_on_both(cli: Runs, key: str) -> None:
    pa, pb = free_ports(2)
    a = cli.start("run", "--ttl", "1", "--identity", "a", "--health-port", str(pa), key, "--", "sleep", "120",
                  name="a")
    wait_until(lambda: probe(pa, "/readyz")[0] == 200, what="a ready")
    b = cli.start("run", "--ttl", "1", "--identity", "b", "--health-port", str(pb), key, "--", "sleep", "120",
                  name="b")
    wait_until(lambda: probe(pb, "/livez")[0] == 200, what="b live")
    wait_until(lambda: probe(pb, "/readyz")[1].get("leader") == "a", what="b sees a lead")
    status, body = probe(pb, "/readyz")
    assert status == 503 and body["ready"] is False and body["identity"] == "b"
    status, body = probe(pa, "/readyz")
    assert status == 200 and body["ready"] is True and body["fencing_token"] > 0
    assert probe(pa, "/livez")[0] == 200
    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 128 + signal.SIGTERM  # sleep's status: it got the forwarded SIGTERM
    wait_until(lambda: probe(pb, "/readyz")[0] == 200, timeout=30, what="b ready after a left")
    assert probe(pa, "/readyz")[0] == 0  # a's server went with it
    b.send_signal(signal.SIGTERM)
    b.wait(30)


def test_a_health_port_in_use_is_a_usage_error(cli: Runs, key: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("run", "--health-port", str(port), key, "--", "true", timeout=60)
    assert done.returncode == 2 and f"--health-port {port}" in done.stderr
