"""A Consul cluster for fault tests: servers and client agents, on loopback
or on hosts of their own, with faults and partitions."""

from __future__ import annotations

import os
import signal
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from .agent import ConsulAgent, find_consul
from .hosts import Host, _Network, hosts_supported


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
    :param host: the :class:`Host` to run in (its own network namespace),
        where the agent uses Consul's default ports on the host's address;
        None runs it on free loopback ports.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 *host*.
    """

    def __init__(self, name: str, *, server: bool, bootstrap_expect: int = 3, binary: Optional[str] = None,
                 config: Optional[Dict[str, Any]] = None, host: Optional[Host] = None) -> None:
        super().__init__(binary=binary, config=config)
        if host is not None:
            self.host, self.ip = host, host.ip
            self.http_port, self.server_port, self.serf_lan_port, self.serf_wan_port, self.https_port = (
                8500, 8300, 8301, 8302, 8501)
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
        # Agents start together: a join tried before the others listen is
        # retried in a second, not Consul's default 30 s.
        cmd += ["-retry-interval", "1s"]
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

    With ``hosts=True`` every agent runs on a host of its own, a Linux
    network namespace attached to one bridge, with an address from a
    documentation range (192.0.2.0/24, or 198.51.100.0/24 or 203.0.113.0/24
    where this machine's own network uses it), so that a test can cut hosts off
    the network: the classic split brain, where an application still talks to
    its client agent but the agent no longer reaches the servers::

        ok, why = ConsulCluster.hosts_supported()   # root and iproute2 needed
        with ConsulCluster(servers=3, clients=2, hosts=True) as cluster:
            agent = cluster.clients[0]
            app = subprocess.Popen(agent.host.command(
                [sys.executable, "app.py", "--consul", agent.address]))
            cluster.partition(agent)    # agent and app still talk, not to the servers
            cluster.heal()

    The test process itself (in the root namespace, on the bridge's first
    address) reaches every agent's :attr:`~ConsulAgent.address` on both sides
    of a partition. The namespaces, their links and the bridge are deleted
    on :meth:`close`, and with them any process still running in a host.

    :param servers: number of server agents (3 tolerates losing one).
    :param clients: number of client agents.
    :param binary: the ``consul`` binary; default :func:`find_consul`.
    :param raft_multiplier: Consul's ``performance.raft_multiplier``; 1 (the
        production recommendation) elects a new Raft leader within a couple
        of seconds, Consul's default 5 takes several times longer.
    :param config: extra configuration given to every agent.
    :param hosts: run every agent on a :class:`Host` of its own (see above);
        :meth:`hosts_supported` tells whether this machine allows it.

    :raises RuntimeError: *hosts* asked for where they cannot be made; the
        message is :meth:`hosts_supported`'s reason.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 *hosts*, :meth:`partition`, :meth:`heal`.
    """

    def __init__(self, servers: int = 3, clients: int = 0, *, binary: Optional[str] = None,
                 raft_multiplier: int = 1, config: Optional[Dict[str, Any]] = None, hosts: bool = False) -> None:
        if servers < 1 or clients < 0:
            raise ValueError(f"need at least one server and no negative count, got servers={servers} "
                             f"clients={clients}")
        config = {"performance": {"raft_multiplier": raft_multiplier}, **(config or {})}
        binary = binary or find_consul()
        self._network: Optional[_Network] = None
        names = [f"s{i + 1}" for i in range(servers)] + [f"c{i + 1}" for i in range(clients)]
        placed: Dict[str, Optional[Host]] = {name: None for name in names}
        if hosts:
            ok, why = self.hosts_supported()
            if not ok:
                raise RuntimeError(f"ConsulCluster(hosts=True): {why}")
            self._network = network = _Network(len(names))
            # A cluster that is never closed still leaves no namespace behind.
            self._finalizer = weakref.finalize(self, network.close)
            try:
                for name in names:
                    placed[name] = network.add_host(name)
            except BaseException:
                network.close()
                raise
        self.servers = [ClusterAgent(name, server=True, bootstrap_expect=servers, binary=binary, config=config,
                                     host=placed[name]) for name in names[:servers]]
        self.clients = [ClusterAgent(name, server=False, binary=binary, config=config, host=placed[name])
                        for name in names[servers:]]
        joins = [f"{s.ip}:{s.serf_lan_port}" for s in self.servers]
        for agent in self.agents:
            agent.join = [j for j in joins if j != f"{agent.ip}:{agent.serf_lan_port}"]

    @staticmethod
    def hosts_supported() -> Tuple[bool, str]:
        """Whether ``ConsulCluster(hosts=True)`` works on this machine:
        ``(True, "...")``, or ``(False, reason)`` (not Linux, not root, no
        ``ip`` command, namespaces refused), for ``pytest.skip(reason)``.
        Tried once per process, by making a namespace and deleting it."""
        return hosts_supported()

    @property
    def hosts(self) -> List[Host]:
        """The hosts of every agent, servers first (empty without ``hosts=True``)."""
        return [a.host for a in self.agents if a.host is not None]

    def partition(self, *agents: ClusterAgent) -> None:
        """Cut the hosts of *agents* off from every other host: what they
        send to the others, and the others to them, is dropped, as by a cut
        cable. They still reach each other, the processes on their own
        hosts, and are reached by the test process. Several calls make
        several separate groups; :meth:`heal` joins them all again.

        :raises RuntimeError: the cluster was made without ``hosts=True``."""
        if self._network is None:
            raise RuntimeError("partition() needs a cluster made with hosts=True")
        foreign = [a for a in agents if a.host is None or a not in self.agents]
        if foreign or not agents:
            raise ValueError(f"partition() takes agents of this cluster, got {agents!r}")
        self._network.partition(a.host for a in agents if a.host is not None)

    def heal(self, *, rejoin: bool = True, timeout: float = 10.0) -> None:
        """Undo every :meth:`partition`: all hosts reach each other again.

        Consul's gossip tries to reach a member it marked failed only every
        30 s (Serf's reconnect interval), so a healed network can take that
        long to become one cluster again. With *rejoin*, each running agent
        that was cut off is asked to join the servers at once (``PUT
        /v1/agent/join``), as ``consul join`` would, for up to *timeout*
        seconds in all; one that does not answer (paused, say) is left to
        Consul's own reconnect. Without *rejoin*, the cluster heals at
        Consul's own pace.

        A server that was cut off comes back with a higher Raft term (it
        kept calling elections alone) and makes the leader step down: expect
        a second or so of ``500 No cluster leader`` after healing a server."""
        if self._network is None or self._network.closed:
            return
        moved = [a for a in self.agents if a.host is not None and self._network.group.get(a.host.name, 0) != 0]
        self._network.heal()
        if not rejoin:
            return
        deadline = time.monotonic() + timeout
        for agent in moved:
            if not agent.running or agent.paused:
                continue
            others = [f"{s.ip}:{s.serf_lan_port}" for s in self.servers if s is not agent and s.running]
            while not any(agent.put(f"/v1/agent/join/{address}", timeout=2.0) for address in others):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)

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
        """:meth:`stop`, and delete every agent's working directory and,
        with ``hosts=True``, the hosts (namespaces, links, bridge) and any
        process still running in them. Idempotent."""
        try:
            for agent in reversed(self.agents):
                agent.close()
        finally:
            if self._network is not None:
                self._network.close()

    def leader(self) -> Optional[ClusterAgent]:
        """The server agent that is the Raft leader now, as the running
        servers report it, or None during an election."""
        by_rpc = {f"{s.ip}:{s.server_port}": s for s in self.servers}
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


