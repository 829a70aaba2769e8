"""Throwaway real Consul agents for tests and demos.

:class:`ConsulAgent` starts ``consul agent -dev`` on free loopback ports,
waits until it has a Raft leader, and stops it, leaving nothing behind::

    with ConsulAgent() as agent:
        candidate = Candidate("app/leader", address=agent.address)

:class:`ConsulCluster` starts several servers and client agents, on
loopback or, with ``hosts=True``, each in its own network namespace so that a
test can cut a host off the network (:meth:`ConsulCluster.partition`).

The ``consul`` binary is found as ``$CONSUL_BIN`` or on ``PATH``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import requests

__all__ = ["ClusterAgent", "ConsulAgent", "ConsulCluster", "Host", "check_id", "delete_key", "destroy_session",
           "find_consul", "free_ports", "overwrite_key", "session_id"]

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


# -- hosts: network namespaces on one bridge -----------------------------------

#: Addresses of the hosts come from the documentation ranges of RFC 5737,
#: which no real network should use; each cluster takes a block of the first
#: one that no address or route of this machine overlaps (some sandboxes do
#: number their own network from 192.0.2.0/24).
HOST_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
_NETNS_PREFIX = "consul-leader-"
_runs = itertools.count(1)
_supported: Optional[Tuple[bool, str]] = None
_supported_lock = threading.Lock()


def _ip_binary() -> Optional[str]:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
                                       if os.access(p, os.X_OK)), None)


def _ip(*args: str, stdin: Optional[str] = None, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its output.

    :raises RuntimeError: it failed (with *check*); the message has its stderr."""
    binary = _ip_binary()
    if binary is None:
        raise RuntimeError("the ip command (iproute2) is not installed")
    done = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(netns: str) -> None:
    for pid in _ip("netns", "pids", netns, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _remove_stale() -> None:
    """Delete the namespaces and links that runs of this module left behind
    when their process died without closing its cluster (SIGKILL, a crash):
    their names carry the pid of that process."""
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith(_NETNS_PREFIX):
            continue
        try:
            pid = int(name[len(_NETNS_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        link = parts[1].strip().split("@", 1)[0]
        if link[:3] in ("clb", "clg", "clv") and "-" in link:
            try:
                pid = int(link[3:].split("-", 1)[0], 16)
            except ValueError:
                continue
            if not _pid_alive(pid):
                _ip("link", "del", link, check=False)


class Host:
    """A host of a :class:`ConsulCluster` made with ``hosts=True``: a network
    namespace with one address on the cluster's bridge, in which one agent
    runs. Processes started with :meth:`command` run on the same host: they
    reach the agent at :attr:`ip` (and at ``127.0.0.1``) and are cut off with
    it by :meth:`ConsulCluster.partition`.

    .. versionadded:: 0.2
    """

    def __init__(self, name: str, ip: str, link: str) -> None:
        #: The network namespace's name (``ip netns``), unique per run.
        self.name = name
        #: The host's address on the cluster's bridge, e.g. ``"192.0.2.2"``.
        self.ip = ip
        #: The host's link on the bridge (the outside end of its veth pair).
        self.link = link

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip}>"

    def command(self, argv: Sequence[str]) -> List[str]:
        """*argv* prefixed to run inside this host (``ip netns exec NAME
        ...``), for :class:`subprocess.Popen`. The process keeps the caller's
        environment and working directory."""
        return [_ip_binary() or "ip", "netns", "exec", self.name, *argv]


class _Network:
    """A bridge in the root namespace, one namespace per host attached to it
    with a veth pair. A partition moves the outside ends of some hosts' pairs
    to a bridge of their own: they reach each other, not the rest, and what
    one side sends the other is lost without an error, as over a cut cable."""

    def __init__(self, count: int) -> None:
        pid, run = os.getpid(), next(_runs)
        self.tag = f"{pid}-{run}"
        # Link names have at most 15 characters; the pid is there for _remove_stale.
        self._link_tag = f"{pid:x}-{run % 256:x}"
        self.bridge = f"clb{self._link_tag}"
        self.hosts: List[Host] = []
        self.group: Dict[str, int] = {}  # host name -> its partition's bridge slot (0: the main bridge)
        self.closed = False
        size = 8
        while size < count + 3:  # network, broadcast and the root namespace's address
            size *= 2
        lock_path = os.path.join(tempfile.gettempdir(), "consul-leader-hosts.lock")
        with open(lock_path, "a") as lock:
            # Parallel runs pick their blocks of the range one at a time.
            fcntl.flock(lock, fcntl.LOCK_EX)
            _remove_stale()
            self.network = self._free_block(size)
            addresses = list(self.network.hosts())
            self.gateway = str(addresses[0])
            self._free = [str(a) for a in addresses[1:]]
            _ip("link", "add", self.bridge, "type", "bridge")
            try:
                _ip("addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            except RuntimeError:
                _ip("link", "del", self.bridge, check=False)
                raise

    @staticmethod
    def _free_block(size: int) -> ipaddress.IPv4Network:
        used: List[Any] = []
        for line in _ip("-o", "-4", "addr", "show").splitlines():
            words = line.split()
            if "inet" in words:
                used.append(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
        for line in _ip("-4", "route", "show", "table", "all").splitlines():
            words = line.split()
            if words and words[0] in ("local", "broadcast", "unicast", "blackhole"):
                words = words[1:]
            if words and words[0][0].isdigit():
                used.append(ipaddress.ip_network(words[0], strict=False))
            for gateway in words[words.index("via") + 1:words.index("via") + 2] if "via" in words else []:
                used.append(ipaddress.ip_network(gateway))
        prefix = 32 - (size.bit_length() - 1)
        for network in HOST_NETWORKS:
            if any(network.overlaps(u) and u.prefixlen <= network.prefixlen for u in used):
                continue  # a real network (this machine's own) lies over the whole range
            for block in network.subnets(new_prefix=prefix):
                if not any(block.overlaps(u) for u in used):
                    return block  # type: ignore[return-value]
        ranges = ", ".join(str(n) for n in HOST_NETWORKS)
        raise RuntimeError(f"no free block of {size} addresses left in {ranges} (this machine's network "
                           f"or other runs use them)")

    def add_host(self, label: str) -> Host:
        if not self._free:
            raise RuntimeError(f"no address left in {self.network}")
        index = len(self.hosts)
        host = Host(f"{_NETNS_PREFIX}{self.tag}-{label}", self._free.pop(0), f"clv{self._link_tag}-{index:x}")
        self.hosts.append(host)
        self.group[host.name] = 0
        _ip("netns", "add", host.name)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        _ip("link", "set", host.link, "master", self.bridge, "up")
        _ip("-n", host.name, "addr", "add", f"{host.ip}/{self.network.prefixlen}", "dev", "eth0")
        _ip("-n", host.name, "link", "set", "eth0", "up")
        _ip("-n", host.name, "link", "set", "lo", "up")
        return host

    def _bridge_mac(self) -> str:
        words = _ip("-o", "link", "show", self.bridge).split()
        return words[words.index("link/ether") + 1]

    def _group_bridge(self, slot: int) -> str:
        return self.bridge if slot == 0 else f"clg{self._link_tag}-{slot:x}"

    def partition(self, hosts: Iterable[Host]) -> None:
        moving = list(hosts)
        taken = {self.group[h.name] for h in self.hosts if h not in moving}
        slot = next(n for n in itertools.count(1) if n not in taken)
        bridge = self._group_bridge(slot)
        if slot not in set(self.group.values()):
            # The main bridge's MAC: the hosts' cached neighbour entry for the
            # root namespace stays right, so it reaches them at once.
            _ip("link", "add", bridge, "address", self._bridge_mac(), "type", "bridge")
            _ip("link", "set", bridge, "up")
        for host in moving:
            self._move(host, slot)
        self._drop_empty_bridges()

    def heal(self) -> None:
        for host in self.hosts:
            self._move(host, 0)
        self._drop_empty_bridges()

    def _move(self, host: Host, slot: int) -> None:
        if self.group[host.name] == slot:
            return
        _ip("link", "set", host.link, "master", self._group_bridge(slot))
        # The root namespace keeps reaching the host through its new bridge
        # (it does not forward between bridges: the partition holds).
        if slot == 0:
            _ip("route", "del", f"{host.ip}/32", check=False)
        else:
            _ip("route", "replace", f"{host.ip}/32", "dev", self._group_bridge(slot), "src", self.gateway)
        self.group[host.name] = slot

    def _drop_empty_bridges(self) -> None:
        for line in _ip("-o", "link", "show", "type", "bridge", check=False).splitlines():
            parts = line.split(":")
            name = parts[1].strip() if len(parts) > 1 else ""
            prefix = f"clg{self._link_tag}-"
            if name.startswith(prefix) and int(name[len(prefix):], 16) not in self.group.values():
                _ip("link", "del", name, check=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for host in self.hosts:
            _kill_namespace_processes(host.name)
            _ip("link", "del", host.link, check=False)
            _ip("netns", "del", host.name, check=False)
        self.group = {}
        self._drop_empty_bridges()
        _ip("link", "del", self.bridge, check=False)


def _probe_hosts() -> Tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, f"network namespaces need root (running as uid {os.geteuid()})"
    if _ip_binary() is None:
        return False, "the ip command (iproute2) is not installed; on Debian or Ubuntu: apt-get install iproute2"
    try:
        network = _Network(1)
        try:
            network.add_host("probe")
        finally:
            network.close()
    except (RuntimeError, OSError) as exc:
        return False, f"cannot make network namespaces here: {exc}"
    return True, "network namespaces, veth pairs and a bridge can be made here"


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
        global _supported
        with _supported_lock:
            if _supported is None:
                _supported = _probe_hosts()
            return _supported

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


# -- faults an operator (or a test) can inflict on a candidate ------------------

def session_id(candidate: Any) -> Optional[str]:
    """The ID of the Consul session *candidate* holds its lock with (None
    before it made one), as ``consul`` commands and the HTTP API name it.

    :param candidate: a :class:`~consul_leader.Candidate`."""
    session = candidate._session
    return None if session is None else session.id


def check_id(candidate: Any) -> Optional[str]:
    """The ID of the TTL health check *candidate* registered on its agent
    (None before it made one).

    :param candidate: a :class:`~consul_leader.Candidate`."""
    session = candidate._session
    return None if session is None else session.check_id


def destroy_session(candidate: Any) -> None:
    """Destroy *candidate*'s session through its agent's HTTP API, as an
    operator running ``consul`` would: its lock is released and Consul
    starts the lock-delay.

    :raises RuntimeError: the candidate has no session yet."""
    sid = session_id(candidate)
    if sid is None:
        raise RuntimeError(f"{candidate!r} has no session yet")
    candidate.client.destroy_session(sid)


def delete_key(candidate: Any) -> None:
    """Delete *candidate*'s lock key, as ``consul kv delete`` would: the lock
    is gone without an invalidation, so Consul sets no lock-delay."""
    candidate.client.delete_key(candidate.key)


def overwrite_key(candidate: Any, value: bytes = b"someone else") -> None:
    """Write *value* into *candidate*'s lock key without a session, as
    ``consul kv put`` would: the lock stays, its value changes."""
    candidate.client.put_key(candidate.key, value)
