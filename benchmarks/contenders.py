"""The contenders, run as real processes against one agent.

A :class:`Pool` is a group of processes competing for one key, of one kind:
consul-leader candidates (:mod:`benchmarks.worker`, one or more candidates
per process), ``consul-leader run`` supervising a command, or ``consul lock``
from the agent's own binary supervising the same command. All report
"elected" with ``time.monotonic()``, which every process on Linux shares: the
worker stamps it in the ``elected`` signal; the supervised command (``sh``)
writes its label into a FIFO the moment it starts, and a reader thread here
stamps it on arrival. The command traps SIGTERM and writes ``end LABEL``
before it exits, so the moment the old command stopped is seen from outside
too.

A :class:`KeyObserver` watches the lock's key with a blocking query and
stamps each change (released, acquired), for the handover breakdown.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "consul-leader"
CLI = "consul-leader run"
LOCK = "consul lock"
#: The kinds whose leader is a supervised command (its start and end are
#: stamped through the FIFO).
SUPERVISORS = (CLI, LOCK)

Event = Tuple[str, str, float]  # (kind, member label, monotonic time)


def child_script(label: str, fifo: str) -> str:
    """The command both supervisors run: its label into *fifo* when it
    starts; on SIGTERM, ``end LABEL`` into *fifo*, then it exits. ``sleep``
    runs in the background because ``sh`` runs a trap only once the
    foreground command has returned; ``wait`` returns at once on a signal."""
    return (f"trap 'echo end {label} > {fifo}; kill $! 2>/dev/null; exit 0' TERM; "
            f"echo {label} > {fifo}; sleep 1000000 & wait")


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
    """Processes of one *kind* (:data:`LIBRARY`, :data:`CLI` or :data:`LOCK`)
    competing for *key*.

    :param address: the agent's address, or a function of a member's label
        giving it (to route each member through its own proxy port).
    :param sizes: candidates per process (always 1 for the supervisors).
    :param ttl: consul-leader's ``ttl`` knob (``consul lock`` has none).
    :param agent: the agent's own address; when given, consul-leader's key
        is written (empty, unlocked) before the processes start, so the first
        election does not wait the lock-delay that a missing key costs (a key
        that is absent may have been deleted under a live leader).
    """

    def __init__(self, kind: str, address: Union[str, Callable[[str], str]], key: str, sizes: List[int],
                 workdir: str, consul: str, ttl: float = 3.0, agent: Optional[str] = None) -> None:
        self.kind = kind
        self.key = key
        self.ttl = ttl
        self.consul = consul
        self.workdir = workdir
        self._address = address if callable(address) else (lambda label, a=address: a)
        self.events: "queue.Queue[Event]" = queue.Queue()
        #: Every event so far, in order of arrival (the queue is consumed).
        self.log: List[Event] = []
        self.members: Dict[str, Member] = {}
        self.leader: Optional[str] = None
        self._serial = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._tag = f"{abs(hash(key)) % 10 ** 8}"
        self._fifo: Optional[str] = None
        self._fifo_fd: Optional[int] = None
        if agent is not None and kind != LOCK:
            _put(agent, key, b"")
        if kind in SUPERVISORS:
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
        prefix = {LIBRARY: "cl", CLI: "run", LOCK: "lock"}[self.kind]
        label = f"{prefix}{self._tag}-{self._serial}"
        address = self._address(label)
        log = open(os.path.join(self.workdir, f"{label}.log"), "wb")
        if self.kind == LIBRARY:
            cmd = [sys.executable, "-m", "benchmarks.worker", address, self.key, label, str(size), str(self.ttl)]
            process = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, start_new_session=True)
        else:
            assert self._fifo is not None
            child = child_script(label, self._fifo)
            if self.kind == CLI:
                cmd = [sys.executable, "-m", "consul_leader", "run", "--address", address, "--identity", label,
                       "--ttl", f"{self.ttl:g}s", self.key, "--", "sh", "-c", child]
            else:
                cmd = [self.consul, "lock", f"-http-addr={address}", self.key, child]
            process = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
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
                self._event((event["ev"], member.label, float(event["t"])))

    def _event(self, event: Event) -> None:
        self.log.append(event)
        self.events.put(event)

    @property
    def lock_key(self) -> str:
        """The KV key that is the lock (``consul lock PREFIX`` locks ``PREFIX/.lock``)."""
        return f"{self.key}/.lock" if self.kind == LOCK else self.key

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
                    text = line.decode().strip()
                    if text.startswith("end "):
                        self._event(("ended", text[4:], now))
                    else:
                        self._event(("elected", text, now))

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
        child exits), ``"sigterm"`` (the leading process, and only it, gets
        SIGTERM, as Kubernetes signals a container's PID 1: a supervisor must
        stop its command itself), or ``"sigkill"`` (a crash: SIGKILL to its
        process group). With *replace*, a process that ends is replaced, so
        the pool keeps its size."""
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
        elif how == "sigterm":
            try:
                os.kill(member.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            member.signal(signal.SIGKILL)
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


def _put(address: str, key: str, value: bytes) -> None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("PUT", f"/v1/kv/{key}", body=value)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT {key}: HTTP {response.status}")
    finally:
        conn.close()


class Change(NamedTuple):
    """One state of the key seen by a :class:`KeyObserver`."""

    t: float  # time.monotonic() when the answer arrived
    modify_index: int  # the key's ModifyIndex (0 when absent)
    session: Optional[str]  # the holder's session; None when released or absent
    value: Optional[bytes]  # None when absent


class KeyObserver:
    """A thread that keeps a blocking query on *key* and stamps each change
    on arrival, re-arming at once (one connection of its own, no retry
    library in between). Its stamps include its own wake-up latency:
    :meth:`calibrate` measures that with writes of its own."""

    def __init__(self, address: str, key: str, wait: str = "5s") -> None:
        self.address = address
        self.key = key
        self.wait = wait
        self.changes: List[Change] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"observer {key}")
        self._thread.start()

    def _run(self) -> None:
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        index = 0
        last: Optional[Tuple[int, Optional[str], Optional[bytes]]] = None
        while not self._stop.is_set():
            try:
                conn.request("GET", f"/v1/kv/{self.key}?index={index}&wait={self.wait}")
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                time.sleep(0.05)
                continue
            now = time.monotonic()
            seen = int(response.getheader("X-Consul-Index") or 0)
            index = seen if seen >= index else 0  # an index that went back: start over
            if response.status == 200:
                entry = json.loads(body)[0]
                raw = entry.get("Value")
                state: Tuple[int, Optional[str], Optional[bytes]] = (
                    entry["ModifyIndex"], entry.get("Session") or None, base64.b64decode(raw) if raw else b"")
            elif response.status == 404:
                state = (0, None, None)
            else:
                time.sleep(0.05)
                continue
            if state != last:
                last = state
                self.changes.append(Change(now, *state))

    def around(self, t0: float) -> Tuple[Optional[str], List[Change]]:
        """The holder's session as last seen before *t0*, and the changes after it."""
        before = [c for c in self.changes if c.t < t0]
        return (before[-1].session if before else None), [c for c in self.changes if c.t >= t0]

    def calibrate(self, rounds: int) -> List[Tuple[float, float]]:
        """Write the observed key *rounds* times from this process; return,
        for each write, the observer's stamp minus the moment the write was
        sent and minus the moment its answer arrived (ms): the wake-up
        latency of the observer lies between the two."""
        found = []
        for i in range(rounds):
            value = f"calibrate-{i}-{time.monotonic_ns()}".encode()
            sent = time.monotonic()
            _put(self.address, self.key, value)
            answered = time.monotonic()
            deadline = answered + 10
            while time.monotonic() < deadline:
                stamp = next((c.t for c in reversed(self.changes) if c.value == value), None)
                if stamp is not None:
                    found.append(((stamp - sent) * 1000, (stamp - answered) * 1000))
                    break
                time.sleep(0.005)
            time.sleep(0.05)
        return found

    def close(self) -> None:
        self._stop.set()


def breakdown(pool: Pool, observer: KeyObserver, old: str, t0: float, t1: float,
              slack: float = 0.25) -> Dict[str, Optional[float]]:
    """Split the handover from *t0* (SIGTERM to *old*) to *t1* (the next
    command started) into segments (ms) from the FIFO and the observer's
    stamps; a segment is None when a stamp is missing (the observer can miss
    a release that the next acquire follows before its query is re-armed).

    Call it a while after *t1*: the observer's stamp of the acquire may come
    after the FIFO's stamp of the command's start (its own latency); stamps
    up to *slack* after *t1* still count."""
    ended = next((t for kind, label, t in pool.log if kind == "ended" and label == old and t >= t0), None)
    old_session, after = observer.around(t0)
    after = [c for c in after if c.t <= t1 + slack]
    acquired = next((c for c in after if c.session is not None and c.session != old_session), None)
    released = next((c for c in after if c.session is None and (acquired is None or c.t <= acquired.t)), None)

    def span(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else (b - a) * 1000

    t_released = released.t if released else None
    t_acquired = acquired.t if acquired else None
    return {"stop": span(t0, ended), "release": span(ended, t_released), "acquire": span(t_released, t_acquired),
            "start": span(t_acquired, t1), "total": span(t0, t1)}


def _children(pid: int) -> List[int]:
    found: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                found += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return found
