"""Candidate processes (``candidate_proc.py``) and ``consul-leader run``
supervisors (running ``command_proc.py``) driven from a test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from consul_leader.cli import run_timing

from conftest import PYTHON, python_env

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "candidate_proc.py")
COMMAND = os.path.join(HERE, "command_proc.py")


class CandidateProcess:
    """One ``candidate_proc.py`` child recording into ``<workdir>/<identity>.jsonl``.

    :param address: the Consul agent it talks to.
    :param key: the election's key.
    :param identity: its identity (unique per process, also across restarts).
    :param workdir: where its records and output go.
    :param ttl: the candidate's ``ttl``.
    :param receivers: ``"none"``, ``"slow"`` or ``"raising"``: one more
        receiver on every signal that sleeps for seconds or raises.
    :param hold: start the process built but not running for election
        until :meth:`go`.
    :param wrap: turns the argv into the one to run (e.g. inside a host's
        network namespace).
    :param lock_delay: the candidate's ``lock_delay`` (default: from the TTL).
    """

    kind = "candidate"

    def __init__(self, address: str, key: str, identity: str, workdir: str, ttl: float = 1.0,
                 receivers: str = "none", hold: bool = False,
                 wrap: Callable[[List[str]], List[str]] = list, lock_delay: Optional[float] = None) -> None:
        self.address, self.key, self.identity, self.ttl = address, key, identity, ttl
        self.lock_delay = lock_delay
        self.receivers, self.hold, self.wrap = receivers, hold, wrap
        self.out = os.path.join(workdir, f"{identity}.jsonl")
        self.log = os.path.join(workdir, f"{identity}.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._offset = 0
        self._up: Optional[Dict[str, Any]] = None
        self._work: Dict[str, Dict[str, Any]] = {}
        self._seen_ev: Set[str] = set()
        #: Set when a fault SIGKILLed it on purpose.
        self.killed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity} pid={self.proc.pid if self.proc else None}>"

    def argv(self) -> List[str]:
        argv = [PYTHON, SCRIPT, "--address", self.address, "--key", self.key, "--identity", self.identity,
                "--out", self.out, "--ttl", str(self.ttl), "--receivers", self.receivers]
        argv += [] if self.lock_delay is None else ["--lock-delay", str(self.lock_delay)]
        return argv + (["--hold"] if self.hold else [])

    def start(self) -> "CandidateProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.wrap(self.argv()), env=python_env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def go(self) -> float:
        """Let a held candidate run for election (SIGUSR2); the time just before."""
        return self.signal(signal.SIGUSR2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> float:
        """Send *signum*; return the monotonic time just before."""
        t = time.monotonic()
        os.kill(self.pid, signum)
        return t

    def wait_stopped(self) -> float:
        """After SIGSTOP: wait until every thread of the process is seen
        stopped (the signal is delivered asynchronously); the time then."""
        task = f"/proc/{self.pid}/task"
        while True:
            states = []
            for tid in os.listdir(task):
                try:
                    with open(f"{task}/{tid}/stat", encoding="ascii") as fh:
                        states.append(fh.read().rsplit(")", 1)[1].split()[0])
                except OSError:
                    continue
            if states and all(state in ("T", "t") for state in states):
                return time.monotonic()
            time.sleep(0.0005)

    def kill(self) -> float:
        """SIGKILL it and reap it; return the time of the kill."""
        self.killed = True
        t = self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        return t

    def stop(self, timeout: float = 30.0) -> Dict[str, Any]:
        """SIGCONT + SIGTERM (the candidate answers its final probe, stops and
        releases its lock), SIGKILL if it does not exit in *timeout*.

        :returns: a ``stopped`` record: whether it still ran when asked,
            its exit code, whether it had to be SIGKILLed."""
        record: Dict[str, Any] = {"ev": "stopped", "id": self.identity, "proc": self.kind,
                                  "killed_by_fault": self.killed, "forced": False}
        if self.proc is None:
            return {**record, "ran": False, "code": None}
        record["ran_until_end"] = self.proc.poll() is None
        if record["ran_until_end"]:
            os.kill(self.pid, signal.SIGCONT)
            record["t"] = time.monotonic()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                record["forced"] = True
                self.proc.kill()
                self.proc.wait()
        record["code"] = self.proc.returncode
        return record

    def records(self) -> List[Dict[str, Any]]:
        """Its records so far (a torn last line of a killed process is skipped)."""
        return read_records(self.out)

    def _read(self) -> None:
        try:
            with open(self.out, encoding="utf-8") as fh:
                fh.seek(self._offset)
                for line in fh:
                    if not line.endswith("\n"):
                        break  # written only in part so far
                    self._offset += len(line.encode("utf-8"))
                    r = json.loads(line)
                    ev = r["ev"]
                    self._seen_ev.add(ev)
                    if ev == "up":
                        self._up = r
                    elif ev == "down":
                        self._up = None
                    elif ev in ("work-start", "work-alive"):
                        self._work[r["work"]] = r
                    elif ev == "work-end":
                        self._work.pop(r["work"], None)
        except FileNotFoundError:
            pass

    def seen(self, ev: str) -> bool:
        """Whether it has written an *ev* record yet."""
        self._read()
        return ev in self._seen_ev

    def working(self, fresh: float = 0.5) -> bool:
        """Whether a job or command of this process wrote a sign of life in
        the last *fresh* seconds and has not ended."""
        self._read()
        now = time.monotonic()
        return any(now - r["t"] < fresh for r in self._work.values())

    def leading(self) -> Optional[Dict[str, Any]]:
        """The ``up`` record of the term this process believes it is in, per
        its records so far (read incrementally), or None."""
        self._read()
        return self._up

    def output(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""


class SupervisorProcess(CandidateProcess):
    """A ``consul-leader run KEY -- python command_proc.py`` supervisor; its
    command records its lifetime into ``<workdir>/<identity>.jsonl``.

    :param ignore_term: its command ignores SIGTERM (the supervisor must
        SIGKILL it after ``--grace``).
    :param grace: the supervisor's ``--grace``, in plain seconds.
    """

    kind = "supervisor"

    def __init__(self, address: str, key: str, identity: str, workdir: str, ttl: float = 1.0,
                 ignore_term: bool = False, grace: float = 0.5,
                 wrap: Callable[[List[str]], List[str]] = list) -> None:
        super().__init__(address, key, identity, workdir, ttl, wrap=wrap)
        self.ignore_term, self.grace = ignore_term, grace

    @staticmethod
    def derived_lock_delay(ttl: float, grace: float = 0.5) -> float:
        """The lock-delay ``run --ttl TTL --grace GRACE`` sets: what every
        other candidate of the key must use too ("One timing per key")."""
        return run_timing(ttl, grace).lock_delay

    def argv(self) -> List[str]:
        command = [PYTHON, COMMAND, "--out", self.out, "--identity", self.identity]
        return [PYTHON, "-m", "consul_leader.cli", "run", self.key, "--address", self.address,
                "--identity", self.identity, "--ttl", f"{self.ttl:g}", "--grace", f"{self.grace:g}",
                "--log-level", "info", "--", *command, *(["--ignore-term"] if self.ignore_term else [])]

    def expected_codes(self) -> List[int]:
        """What it may exit with on SIGTERM: its command's status (0, or 137
        when a command that ignores SIGTERM was SIGKILLed after the grace),
        or 143 when no command ran."""
        return [137, 143] if self.ignore_term else [0, 143]

    def stop(self, timeout: float = 30.0) -> Dict[str, Any]:
        record = super().stop(timeout + self.grace)
        record["expected"] = self.expected_codes()
        return record


def read_records(path: str) -> List[Dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


@contextlib.contextmanager
def candidate_processes(address: str, key: str, ttl: float) -> Iterator[Callable[[str], CandidateProcess]]:
    """Yield ``start(identity)``, which starts a :class:`CandidateProcess`
    on *key*; afterwards every one is stopped and its output printed."""
    made: List[CandidateProcess] = []
    workdir = tempfile.mkdtemp(prefix="consul-leader-procs-")

    def start(identity: str) -> CandidateProcess:
        made.append(CandidateProcess(address, key, identity, workdir, ttl).start())
        return made[-1]

    try:
        yield start
    finally:
        for p in made:
            p.stop()
        for p in made:
            print(f"--- {p.identity} output ---\n{p.output()}")
        shutil.rmtree(workdir, ignore_errors=True)


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll *predicate* until it returns something truthy; return that.

    :raises AssertionError: *timeout* passed first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(every)
