"""A throwaway real Consul agent: ``consul agent -dev`` on free loopback
ports, or one member of a :class:`~consul_leader.testing.ConsulCluster`."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

import requests

from .hosts import Host

_INSTALL_HINT = ("Consul is a single binary: install HashiCorp's 'consul' package (their apt, yum or Homebrew "
                 "repository, or the zip from their releases page), or Debian 11's 'consul' package, then put "
                 "it on PATH or set CONSUL_BIN=/path/to/consul")


def find_consul() -> str:
    """The path of a ``consul`` binary.

    :raises FileNotFoundError: none found; the message says how to get one."""
    env = os.environ.get("CONSUL_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(f"CONSUL_BIN={env!r} is not an executable file. {_INSTALL_HINT}.")
    found = shutil.which("consul")
    if found:
        return found
    raise FileNotFoundError(f"no consul binary: CONSUL_BIN is not set and there is no consul on PATH. "
                            f"{_INSTALL_HINT}.")


def free_ports(count: int) -> List[int]:
    """*count* distinct TCP ports free on 127.0.0.1 right now, below the
    kernel's ephemeral range where it has one.

    A port is only free until someone binds it, and the kernel hands out
    ephemeral ports to every outgoing connection on the machine: one taken
    from that range can be in use by the time the agent binds it (seen:
    "bind: address already in use" with a few hundred connections open).

    .. versionchanged:: 0.2 below the ephemeral range."""
    low = _ephemeral_low()
    socks: List[socket.socket] = []
    try:
        tries = 0
        while len(socks) < count:
            s = socket.socket()
            port = random.randrange(_LOWEST, low) if low - _LOWEST >= 1000 and tries < 100 * count else 0
            tries += 1
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: Below this, ports are often fixed by services (databases, brokers).
_LOWEST = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else IANA's (49152: BSD, macOS, Windows)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


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
        self.log_level = "debug"
        #: The address the agent binds and serves on.
        self.ip = "127.0.0.1"
        #: The :class:`Host` the agent runs in, or None on loopback.
        self.host: Optional[Host] = None

    @property
    def address(self) -> str:
        """The agent's HTTP address, ``127.0.0.1:PORT`` (``https://...`` for
        TLS; the host's address for an agent of a cluster with hosts)."""
        port = self.https_port if self.scheme == "https" else self.http_port
        prefix = "https://" if self.scheme == "https" else ""
        return f"{prefix}{self.ip}:{port}"

    @property
    def url(self) -> str:
        """The agent's HTTP base URL."""
        return self.address if "://" in self.address else f"http://{self.address}"

    def __enter__(self) -> "ConsulAgent":
        # ``with ConsulAgent().start() as agent`` must not launch a second one.
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the agent and delete its working directory (log included)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def command(self) -> List[str]:
        """The ``consul agent`` command line."""
        return [self.binary, "agent", "-dev"] + self._common_args()

    def _common_args(self) -> List[str]:
        """Arguments every agent started here shares: loopback (or its host's
        address) only, its own ports, DNS and gRPC off, then the extra config
        file and arguments."""
        # In a host, the HTTP API also listens on the host's own loopback, as
        # an agent on a real machine does for the processes beside it.
        client = "127.0.0.1" if self.ip == "127.0.0.1" else f"{self.ip} 127.0.0.1"
        args = ["-bind", self.ip, "-client", client,
                "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1",
                "-server-port", str(self.server_port), "-serf-lan-port", str(self.serf_lan_port),
                "-serf-wan-port", str(self.serf_wan_port), "-log-level", self.log_level]
        if self.config is not None:
            path = os.path.join(self.workdir, "extra.json")
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self.config, fh)
            args += ["-config-file", path]
        return args + self.extra_args

    def start(self, timeout: float = 30.0) -> "ConsulAgent":
        """Start the agent and wait until it has a Raft leader.

        :raises RuntimeError: it exited or did not become ready in *timeout*;
            the message carries the end of its log."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the agent process without waiting for it to be ready (a
        cluster's servers only become ready together)."""
        log = open(self.log_path, "ab")
        command = self.command()
        if self.host is not None:
            command = self.host.command(command)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/v1/status/leader`` names a leader and, where the
        agent lets us look (no ACL in the way), its node's ``serfHealth``
        check exists: until then Consul refuses to create sessions."""
        deadline = time.monotonic() + timeout
        node: Optional[str] = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"consul agent exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.get("/v1/status/leader"):
                if node is None:
                    me = self.get("/v1/agent/self")
                    if not isinstance(me, dict):
                        return  # an ACL agent before its bootstrap: nothing more to see
                    node = str(me["Config"]["NodeName"])
                checks = self.get(f"/v1/health/node/{node}") or []
                if any(c.get("CheckID") == "serfHealth" for c in checks):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"consul agent not ready after {timeout}s:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 1.0) -> Any:
        """``GET`` *path* (e.g. ``/v1/status/peers``) from this agent and
        return the decoded JSON, or None if it did not answer 200 in time."""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        try:
            r = requests.get(f"{self.url}{path}", timeout=timeout, verify=self.verify, headers=headers)
            return r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def put(self, path: str, timeout: float = 5.0) -> bool:
        """``PUT`` *path* (e.g. ``/v1/agent/join/ADDRESS``) to this agent;
        True if it answered 200 in time."""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        try:
            r = requests.put(f"{self.url}{path}", timeout=timeout, verify=self.verify, headers=headers)
            return r.status_code == 200
        except requests.RequestException:
            return False

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

    def restart(self, timeout: float = 30.0, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with *kill*) and start again on the same
        ports. A dev agent keeps no state, so every session and key is gone
        afterwards; an agent of a :class:`ConsulCluster` keeps its data dir."""
        self.stop(signal.SIGKILL if kill else signal.SIGTERM)
        self.start(timeout)

    @property
    def running(self) -> bool:
        """True while the agent's process exists (also while SIGSTOPped)."""
        return self.process is not None and self.process.poll() is None

    @property
    def paused(self) -> bool:
        """True while the agent's process is stopped (SIGSTOP)."""
        if not self.running:
            return False
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except (OSError, IndexError):
            return False

    def pause(self) -> None:
        """SIGSTOP the agent; returns once the kernel shows it stopped (the
        signal is delivered asynchronously)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2.0
        while not self.paused and time.monotonic() < deadline:
            time.sleep(0.001)

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


