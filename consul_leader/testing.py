"""Throwaway real Consul agents for tests and demos.

:class:`ConsulAgent` starts ``consul agent -dev`` on free loopback ports,
waits until it has a Raft leader, and stops it, leaving nothing behind::

    with ConsulAgent() as agent:
        candidate = Candidate("app/leader", address=agent.address)

The ``consul`` binary is found as ``$CONSUL_BIN``, on ``PATH``, or in the
project's ``.tools/bin`` (where ``scripts/install-consul`` puts it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

__all__ = ["ConsulAgent", "find_consul", "free_ports"]


def find_consul() -> str:
    """The path of a ``consul`` binary.

    :raises FileNotFoundError: none found; the message says how to get one."""
    env = os.environ.get("CONSUL_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(f"CONSUL_BIN={env!r} is not an executable file")
    found = shutil.which("consul")
    if found:
        return found
    local = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "consul"
    if os.access(local, os.X_OK):
        return str(local)
    raise FileNotFoundError("no consul binary: run scripts/install-consul, put consul on PATH, "
                            "or set CONSUL_BIN=/path/to/consul")


def free_ports(count: int) -> List[int]:
    """*count* distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ConsulAgent:
    """A real Consul agent in ``-dev`` mode (a single in-memory server) on
    free loopback ports.

    :param binary: the ``consul`` binary; default :func:`find_consul`.
    :param extra_args: more ``consul agent`` arguments.
    :param config: extra agent configuration, written as a JSON config file
        (e.g. ACLs or TLS).
    :param http_port: fix the HTTP port (default: a free one), so that a
        restarted agent keeps its address.

    .. versionadded:: 0.1
    """

    def __init__(self, binary: Optional[str] = None, extra_args: Optional[List[str]] = None,
                 config: Optional[Dict[str, Any]] = None, http_port: Optional[int] = None,
                 scheme: str = "http") -> None:
        self.binary = binary or find_consul()
        self.extra_args = list(extra_args or [])
        self.config = config
        self.scheme = scheme
        ports = free_ports(5)
        self.http_port = http_port or ports[0]
        self.server_port, self.serf_lan_port, self.serf_wan_port, self.https_port = ports[1:]
        self.workdir = tempfile.mkdtemp(prefix="consul-leader-agent-")
        self.log_path = os.path.join(self.workdir, "agent.log")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.verify: Any = True
        self.token: Optional[str] = None

    @property
    def address(self) -> str:
        """The agent's HTTP address, ``127.0.0.1:PORT`` (``https://...`` for TLS)."""
        port = self.https_port if self.scheme == "https" else self.http_port
        prefix = "https://" if self.scheme == "https" else ""
        return f"{prefix}127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """The agent's HTTP base URL."""
        return self.address if "://" in self.address else f"http://{self.address}"

    def __enter__(self) -> "ConsulAgent":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def command(self) -> List[str]:
        """The ``consul agent`` command line."""
        cmd = [self.binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
               "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1",
               "-server-port", str(self.server_port), "-serf-lan-port", str(self.serf_lan_port),
               "-serf-wan-port", str(self.serf_wan_port), "-log-level", "debug"]
        if self.config is not None:
            import json

            path = os.path.join(self.workdir, "extra.json")
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self.config, fh)
            cmd += ["-config-file", path]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> "ConsulAgent":
        """Start the agent and wait until it has a Raft leader.

        :raises RuntimeError: it exited or did not become ready in *timeout*;
            the message carries the end of its log."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/v1/status/leader`` names a leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"consul agent exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                headers = {"X-Consul-Token": self.token} if self.token else {}
                r = requests.get(f"{self.url}/v1/status/leader", timeout=1, verify=self.verify,
                                 headers=headers)
                if r.status_code == 200 and r.json():
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"consul agent not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after *timeout*); idempotent."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped agent cannot act on SIGTERM
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the agent (a crash)."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same ports. A dev agent keeps no state,
        so every session and key is gone afterwards."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP the agent."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the agent."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 60) -> str:
        """The last *lines* of the agent's log."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""
