"""Candidate processes (``candidate_proc.py``) driven from a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

from conftest import PYTHON, python_env

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "candidate_proc.py")


class CandidateProcess:
    """One ``candidate_proc.py`` child recording into ``<workdir>/<identity>.jsonl``.

    :param address: the Consul agent it talks to.
    :param key: the election's key.
    :param identity: its identity (unique per process, also across restarts).
    :param workdir: where its records and output go.
    :param ttl: the candidate's ``ttl``.
    """

    def __init__(self, address: str, key: str, identity: str, workdir: str, ttl: float = 1.0) -> None:
        self.address, self.key, self.identity, self.ttl = address, key, identity, ttl
        self.out = os.path.join(workdir, f"{identity}.jsonl")
        self.log = os.path.join(workdir, f"{identity}.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._offset = 0
        self._up: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<CandidateProcess {self.identity} pid={self.proc.pid if self.proc else None}>"

    def start(self) -> "CandidateProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, SCRIPT, "--address", self.address, "--key", self.key, "--identity", self.identity,
                 "--out", self.out, "--ttl", str(self.ttl)],
                env=python_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> float:
        """Send *signum*; return the monotonic time just before."""
        t = time.monotonic()
        os.kill(self.pid, signum)
        return t

    def kill(self) -> float:
        """SIGKILL it and reap it; return the time of the kill."""
        t = self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        return t

    def stop(self, timeout: float = 15.0) -> None:
        """SIGCONT + SIGTERM (the candidate stops and releases its lock),
        SIGKILL if it does not exit in *timeout*. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def records(self) -> List[Dict[str, Any]]:
        """Its records so far (a torn last line of a killed process is skipped)."""
        return read_records(self.out)

    def leading(self) -> Optional[Dict[str, Any]]:
        """The ``up`` record of the term this process believes it is in, per
        its records so far (read incrementally), or None."""
        try:
            with open(self.out, encoding="utf-8") as fh:
                fh.seek(self._offset)
                for line in fh:
                    if not line.endswith("\n"):
                        break  # written only in part so far
                    self._offset += len(line.encode("utf-8"))
                    r = json.loads(line)
                    if r["ev"] == "up":
                        self._up = r
                    elif r["ev"] == "down":
                        self._up = None
        except FileNotFoundError:
            pass
        return self._up

    def output(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""


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
