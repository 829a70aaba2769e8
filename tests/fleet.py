"""Real server processes on ports of their own, asked over real HTTP: the
fleets of the readiness, FastAPI, APScheduler and gevent tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import requests

from conftest import python_env


class Output:
    """The output of *proc* (its stdout pipe), read on a thread of its own so
    that the pipe never fills up and blocks the process."""

    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self._proc = proc
        self._lines: List[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line)

    def text(self) -> str:
        return b"".join(self._lines).decode("utf-8", "replace")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Server:
    """One server process (a process group of its own) listening on *port*.

    :param argv: the command line.
    :param port: where it serves HTTP.
    :param env: more environment (over the test's ``python_env()``).
    :param cwd: its working directory."""

    def __init__(self, argv: Sequence[str], port: int, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env={**python_env(), **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self._output = Output(self.proc)

    def __repr__(self) -> str:
        return f"<Server {self.port} pid={self.proc.pid}>"

    def output(self) -> str:
        return self._output.text()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, timeout: float = 3.0) -> Tuple[int, Any]:
        """(status, JSON body) of GET *path*; (0, None) when it does not answer."""
        try:
            r = requests.get(self.url + path, timeout=timeout)
        except requests.RequestException:
            return 0, None
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def kill(self, signum: int = signal.SIGKILL) -> float:
        """Send *signum* to the whole group; the time just before."""
        t = time.monotonic()
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass
        return t

    def stop(self) -> None:
        if self.alive:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        self.kill(signal.SIGKILL)  # leftovers of the group
        self._output.join(2)


def ready_ones(servers: Sequence[Server], path: str = "/readyz") -> List[Server]:
    """The servers answering 200 on *path* (the leaders, for /readyz)."""
    return [s for s in servers if s.alive and s.get(path)[0] == 200]


def answers(servers: Sequence[Server], path: str = "/readyz") -> List[int]:
    return [s.get(path)[0] for s in servers]
