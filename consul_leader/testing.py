"""Throwaway real Consul agents for tests and demos.

:class:`ConsulAgent` starts ``consul agent -dev`` on free loopback ports,
waits until it has a Raft leader, and stops it, leaving nothing behind::

    with ConsulAgent() as agent:
        candidate = Candidate("app/leader", address=agent.address)

The ``consul`` binary is found as ``$CONSUL_BIN``, on ``PATH``, or in the
project's ``.tools/bin`` (where ``scripts/install-consul`` puts it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import requests

__all__ = ["ClusterAgent", "ConsulAgent", "ConsulCluster", "find_consul", "free_ports"]


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
        self.log_level = "debug"

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
        """Arguments every agent started here shares: loopback only, its own
        ports, DNS and gRPC off, then the extra config file and arguments."""
        args = ["-bind", "127.0.0.1", "-client", "127.0.0.1",
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
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
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


class ClusterAgent(ConsulAgent):
    """One agent of a :class:`ConsulCluster`: a server (``-server
    -bootstrap-expect N``) or a client, with a data dir that survives
    :meth:`restart`, joined to the cluster's servers with ``-retry-join``.
    Made by :class:`ConsulCluster`; all of :class:`ConsulAgent`'s helpers
    (:meth:`kill`, :meth:`restart`, :meth:`pause`, :meth:`resume`,
    :meth:`log_tail`) work on it.

    :param name: the node name, e.g. ``"s1"`` or ``"c1"``.
    :param server: True for a server agent.
    :param bootstrap_expect: number of servers (servers only).
    :param binary: the ``consul`` binary.
    :param config: extra agent configuration, as for :class:`ConsulAgent`.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str, *, server: bool, bootstrap_expect: int = 3, binary: Optional[str] = None,
                 config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(binary=binary, config=config)
        self.name = name
        self.server = server
        self.bootstrap_expect = bootstrap_expect
        self.join: List[str] = []
        self.log_level = "info"

    def __repr__(self) -> str:
        return f"<ClusterAgent {self.name} {'server' if self.server else 'client'} {self.address}>"

    def command(self) -> List[str]:
        """The ``consul agent`` command line."""
        cmd = [self.binary, "agent", "-node", self.name, "-data-dir", os.path.join(self.workdir, "data")]
        if self.server:
            cmd += ["-server", "-bootstrap-expect", str(self.bootstrap_expect)]
        for address in self.join:
            cmd += ["-retry-join", address]
        return cmd + self._common_args()


class ConsulCluster:
    """A real Consul cluster on loopback: *servers* server agents that elect
    a Raft leader among themselves, and *clients* client agents joined to
    them, each on its own free ports with its own data dir. Made for fault
    tests of applications that use consul-leader::

        with ConsulCluster(clients=2) as cluster:
            candidate = Candidate("app/leader", address=cluster.clients[0].address)
            ...
            old = cluster.kill_leader()       # SIGKILL the Raft leader
            cluster.wait_for_leader()         # the other servers elect one
            old.restart()                     # it rejoins from its data dir
            cluster.clients[0].restart(kill=True)   # crash and restart an agent
            cluster.clients[1].pause()        # SIGSTOP; resume() sends SIGCONT

    Point applications at client agents, as in production: a client agent
    keeps answering while the servers elect a new leader (with ``500 No
    cluster leader``), and its restart invalidates the sessions of its node.

    :param servers: number of server agents (3 tolerates losing one).
    :param clients: number of client agents.
    :param binary: the ``consul`` binary; default :func:`find_consul`.
    :param raft_multiplier: Consul's ``performance.raft_multiplier``; 1 (the
        production recommendation) elects a new Raft leader within a couple
        of seconds, Consul's default 5 takes several times longer.
    :param config: extra configuration given to every agent.

    .. versionadded:: 0.1
    """

    def __init__(self, servers: int = 3, clients: int = 0, *, binary: Optional[str] = None,
                 raft_multiplier: int = 1, config: Optional[Dict[str, Any]] = None) -> None:
        if servers < 1 or clients < 0:
            raise ValueError(f"need at least one server and no negative count, got servers={servers} "
                             f"clients={clients}")
        config = {"performance": {"raft_multiplier": raft_multiplier}, **(config or {})}
        binary = binary or find_consul()
        self.servers = [ClusterAgent(f"s{i + 1}", server=True, bootstrap_expect=servers, binary=binary,
                                     config=config) for i in range(servers)]
        self.clients = [ClusterAgent(f"c{i + 1}", server=False, binary=binary, config=config)
                        for i in range(clients)]
        joins = [f"127.0.0.1:{s.serf_lan_port}" for s in self.servers]
        for agent in self.agents:
            agent.join = [j for j in joins if j != f"127.0.0.1:{agent.serf_lan_port}"]

    def __repr__(self) -> str:
        return f"<ConsulCluster servers={len(self.servers)} clients={len(self.clients)}>"

    @property
    def agents(self) -> List[ClusterAgent]:
        """Every agent, servers first."""
        return self.servers + self.clients

    def __enter__(self) -> "ConsulCluster":
        if any(agent.running for agent in self.agents):
            return self  # started already
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> "ConsulCluster":
        """Start every agent, then wait until a Raft leader exists, every
        server lists all servers in ``/v1/status/peers``, and every client
        agent sees the leader.

        :raises RuntimeError: not ready within *timeout*; the message carries
            the end of each agent's log."""
        for agent in self.agents:
            agent.launch()
        deadline = time.monotonic() + timeout
        self.wait_for_leader(timeout)
        self._wait(lambda: all(len(s.get("/v1/status/peers") or []) == len(self.servers) for s in self.servers),
                   deadline, "all servers in /v1/status/peers")
        for agent in self.clients:
            agent.wait_ready(max(deadline - time.monotonic(), 1.0))
        return self

    def stop(self) -> None:
        """Stop every agent (SIGCONT first if paused, then SIGTERM, SIGKILL
        if it lingers); no process is left behind. Idempotent."""
        for agent in reversed(self.agents):
            agent.stop()

    def close(self) -> None:
        """:meth:`stop`, and delete every agent's working directory."""
        for agent in reversed(self.agents):
            agent.close()

    def leader(self) -> Optional[ClusterAgent]:
        """The server agent that is the Raft leader now, as the running
        servers report it, or None during an election."""
        by_rpc = {f"127.0.0.1:{s.server_port}": s for s in self.servers}
        for server in self.servers:
            if server.running:
                found = by_rpc.get(server.get("/v1/status/leader", timeout=0.5) or "")
                if found is not None and found.running:
                    return found
        return None

    def wait_for_leader(self, timeout: float = 30.0, *, not_: Optional[ClusterAgent] = None) -> ClusterAgent:
        """Wait until a Raft leader exists (other than *not_*, e.g. the one
        just killed or paused) and return it.

        :raises RuntimeError: none within *timeout*."""
        found: List[ClusterAgent] = []

        def elected() -> bool:
            leader = self.leader()
            if leader is None or leader is not_:
                return False
            found.append(leader)
            return True

        self._wait(elected, time.monotonic() + timeout, "a Raft leader")
        return found[-1]

    def kill_leader(self) -> ClusterAgent:
        """SIGKILL the Raft leader server and return it (``restart()`` it to
        bring it back).

        :raises RuntimeError: there is no leader to kill within 30 s."""
        leader = self.wait_for_leader()
        leader.kill()
        return leader

    def log_tails(self, lines: int = 30) -> str:
        """The end of every agent's log, each under its node name: attach it
        to a failing test's report."""
        return "\n".join(f"--- {a.name} ({a.address}) ---\n{a.log_tail(lines)}" for a in self.agents)

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for agent in self.agents:
                if agent.process is not None and agent.process.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"consul agent {agent.name} exited with {agent.process.returncode}:\n"
                                       f"{agent.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"consul cluster: no {what} in time:\n{self.log_tails()}")
