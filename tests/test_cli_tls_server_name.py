"""``-tls-server-name`` (consul lock's, and the consul CLI's) is the name
the agent's certificate is checked against, as ``CONSUL_TLS_SERVER_NAME``:
with it, an agent reached by its IP address answers; with a name its
certificate does not carry, the command says Consul cannot be reached."""

from __future__ import annotations

import subprocess
from pathlib import Path

from security_helpers import make_pki, tls_agent

from consul_leader.cli import EXIT_NO_LEADER, EXIT_UNAVAILABLE

from conftest import PYTHON, python_env


def test_tls_server_name_is_the_name_the_agents_certificate_is_checked_against(tmp_path: Path) -> None:
    pki = make_pki(str(tmp_path))
    agent, address = tls_agent(pki)
    env = {k: v for k, v in python_env().items() if not k.startswith("CONSUL_")}

    def status(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "consul_leader.cli", "status", f"-http-addr={address}",
                               f"-ca-file={pki.ca}", f"-tls-server-name={name}", "tls/leader"], env=env,
                              capture_output=True, text=True, timeout=60)

    with agent:
        # Consul's server certificates name server.<dc>.consul, not 127.0.0.1.
        reached = status("server.dc1.consul")
        assert reached.returncode == EXIT_NO_LEADER, reached.stderr
        wrong = status("elsewhere.example")
        assert wrong.returncode == EXIT_UNAVAILABLE and "elsewhere.example" in wrong.stderr, wrong.stderr
