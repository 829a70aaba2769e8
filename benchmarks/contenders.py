"""The two contenders, run as real processes against one agent.

A :class:`Pool` is a group of processes competing for one key: either
consul-leader candidates (:mod:`benchmarks.worker`, one or more candidates
per process) or ``consul lock`` processes from the agent's own binary. Both
report "elected" with ``time.monotonic()``, which every process on Linux
shares: the worker stamps it in the ``elected`` signal; the child of
``consul lock`` writes its label into a FIFO the moment it starts, and a
reader thread here stamps it on arrival.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Callable, Dict, List, Optional, Tuple, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "consul-leader"
LOCK = "consul lock"

Event = Tuple[str, str, float]  # (kind, member label, monotonic time)


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    # BENCH_LIBRARY_PATH: measure another checkout of consul_leader (a
    # candidate fix) with the same benchmark code.
    paths = [os.environ.get("BENCH_LIBRARY_PATH", ""), ROOT, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    # An inherited token would override the agent's (dev agents have no ACLs).
    env.pop("CONSUL_HTTP_TOKEN", None)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* and its reaped children, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Member:
    """One process of a pool."""

    def __init__(self, label: str, process: "subprocess.Popen[bytes]", size: int) -> None:
        self.label = label
        self.process = process
        self.size = size
        self.ready = threading.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send *signum* to the member's whole process group (a crash kills
        the child of ``consul lock`` too, as a container's death would)."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 15.0) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()


class Pool:
    """Processes of one *kind* (:data:`LIBRARY` or :data:`LOCK`) competing
    for *key*.

    :param address: the agent's address, or a function of a member's label
        giving it (to route each member through its own proxy port).
    :param sizes: candidates per process (always 1 for ``consul lock``).
    :param ttl: consul-leader's ``ttl`` knob (``consul lock`` has none).
    """

    def __init__(self, kind: str, address: Union[str, Callable[[str], str]], key: str, sizes: List[int],
                 workdir: str, consul: str, ttl: float = 3.0) -> None:
        self.kind = kind
        self.key = key
        self.ttl = ttl
        self.consul = consul
        self.workdir = workdir
        self._address = address if callable(address) else (lambda label, a=address: a)
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.members: Dict[str, Member] = {}
        self.leader: Optional[str] = None
        self._serial = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._tag = f"{abs(hash(key)) % 10 ** 8}"
        self._fifo: Optional[str] = None
        self._fifo_fd: Optional[int] = None
        if kind == LOCK:
            self._fifo = os.path.join(workdir, f"elected-{self._tag}.fifo")
            os.mkfifo(self._fifo)
            # O_RDWR: the reader never sees EOF between writers.
            self._fifo_fd = os.open(self._fifo, os.O_RDWR)
            threading.Thread(target=self._read_fifo, daemon=True, name=f"fifo {key}").start()
        for size in sizes:
            self.spawn(size)

    # -- processes ----------------------------------------------------------

    def spawn(self, size: int = 1) -> Member:
        self._serial += 1
        label = f"{'cl' if self.kind == LIBRARY else 'lock'}{self._tag}-{self._serial}"
        address = self._address(label)
        log = open(os.path.join(self.workdir, f"{label}.log"), "wb")
        if self.kind == LIBRARY:
            cmd = [sys.executable, "-m", "benchmarks.worker", address, self.key, label, str(size), str(self.ttl)]
            process = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, start_new_session=True)
        else:
            child = f"echo {label} > {self._fifo}; exec sleep 1000000"
            cmd = [self.consul, "lock", f"-http-addr={address}", self.key, child]
            process = subprocess.Popen(cmd, env=_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True)
        log.close()
        member = Member(label, process, size)
        self.members[label] = member
        if self.kind == LIBRARY:
            assert process.stdout is not None
            threading.Thread(target=self._read_worker, args=(member, process.stdout), daemon=True,
                             name=f"worker {label}").start()
        else:
            member.ready.set()
        return member

    def _read_worker(self, member: Member, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("ev") == "ready":
                member.ready.set()
            elif event.get("ev") in ("elected", "resigning"):
                self.events.put((event["ev"], member.label, float(event["t"])))

    def _read_fifo(self) -> None:
        assert self._fifo_fd is not None
        with os.fdopen(self._fifo_fd, "rb", buffering=0) as fh:
            buffer = b""
            while True:
                try:
                    chunk = fh.read(4096)
                except OSError:
                    return
                if not chunk:
                    return
                now = time.monotonic()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self.events.put(("elected", line.decode().strip(), now))

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for member in list(self.members.values()):
            if not member.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{member.label} did not start; see {self.workdir}/{member.label}.log")

    def wait_elected(self, after: float = 0.0, timeout: float = 120.0) -> Tuple[str, float]:
        """Wait for the first election stamped later than *after*; return
        (member label, time)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, label, t = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"nobody elected on {self.key!r} within {timeout}s") from None
            if kind == "elected" and t > after:
                self.leader = label
                return label, t

    def _wait_resigning(self, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            kind, label, t = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind == "resigning":
                return t

    # -- what the benchmarks do ---------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Wait until every process runs and somebody leads."""
        self.wait_ready(timeout)
        self.wait_elected(timeout=timeout)

    def step_down(self, how: str, replace: bool = True) -> float:
        """Make the leader let go; return the monotonic time it began.

        *how*: ``"resign"`` (consul-leader: ``resign()``; consul lock: its
        child exits), ``"sigterm"`` (the leading process gets SIGTERM), or
        ``"sigkill"`` (a crash: SIGKILL to its process group). With
        *replace*, a process that ends is replaced, so the pool keeps its size."""
        assert self.leader is not None
        member = self.members[self.leader]
        if how == "resign" and self.kind == LIBRARY:
            assert member.process.stdin is not None
            member.process.stdin.write(b"resign\n")
            member.process.stdin.flush()
            return self._wait_resigning()
        t0 = time.monotonic()
        if how == "resign":
            for child in _children(member.pid):
                os.kill(child, signal.SIGTERM)
        else:
            member.signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        if not replace:
            return t0
        with self._lock:
            self._pending += 1
        threading.Thread(target=self._replace, args=(member,), daemon=True).start()
        return t0

    def _replace(self, member: Member) -> None:
        member.reap()
        self.members.pop(member.label, None)
        self.spawn(member.size)
        with self._lock:
            self._pending -= 1

    def handover(self, how: str, timeout: float = 120.0, replace: bool = True) -> Tuple[float, float]:
        """Step down and wait for the next leader; return (start, elected)."""
        t0 = self.step_down(how, replace)
        _, t1 = self.wait_elected(after=t0, timeout=timeout)
        return t0, t1

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until replaced processes run again."""
        deadline = time.monotonic() + timeout
        while self._pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pool for {self.key!r} did not refill")
            time.sleep(0.02)
        self.wait_ready(max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        members = list(self.members.values())
        for member in members:
            member.signal(signal.SIGTERM)
        for member in members:
            member.reap()
        if self._fifo:
            try:
                os.unlink(self._fifo)
            except OSError:
                pass


def _children(pid: int) -> List[int]:
    found: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                found += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return found
