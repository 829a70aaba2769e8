"""Hosts for tests: network namespaces on a bridge, so that a test can cut
a host off the network (as root on Linux)."""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

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


def hosts_supported() -> Tuple[bool, str]:
    """``(True, "")`` if this machine lets a test make hosts (network
    namespaces), else ``(False, why)``; probed once per process."""
    global _supported
    with _supported_lock:
        if _supported is None:
            _supported = _probe_hosts()
        return _supported
