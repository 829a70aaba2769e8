"""The lease watchdog of ``consul-leader run``: a small process, started once
when ``run`` starts, that spawns each term's command and enforces the lease
on it, so that neither a frozen nor a dead supervisor lets the command run
beside the next leader's.

The supervisor (:class:`Watchdog`) and the watchdog process (:func:`serve`)
talk over a socketpair in JSON lines. The supervisor asks it to spawn the
command and keeps telling it the lease's deadline, an absolute time on the
lease clock (``CLOCK_BOOTTIME`` on Linux: one clock for every process of the
machine). The watchdog sends SIGTERM to the command's process group when the
deadline passes without renewal, SIGKILL when the grace has passed or, at the
latest, when another process could be elected; it kills the group at once
when the supervisor dies (the socket reaches end of file).

The process side uses only the standard library and is started as a script
(not through the package), so it costs one bare interpreter start, once.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

if hasattr(time, "CLOCK_BOOTTIME"):
    def clock() -> float:
        # The same clock as consul_leader.session.lease_clock: deadlines are
        # absolute times on it, passed between processes.
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    clock = time.monotonic

# What this process ignores (and Python itself: SIGPIPE, SIGXFSZ), the
# command gets back at their defaults.
_CHILD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGTSTP", "SIGTTIN",
                                                          "SIGTTOU", "SIGPIPE", "SIGXFSZ", "SIGCHLD")
                       if hasattr(signal, name))


# -- the watchdog process ---------------------------------------------------

class _Command:
    def __init__(self, pid: int, deadline: float, grace: float, after_lease: float) -> None:
        self.pid = pid
        self.deadline = deadline  # the lease's end, as last heard
        self.grace = grace
        self.after_lease = after_lease  # time from the lease's end until another can be elected, minus slack
        self.stopped_at: Optional[float] = None
        self.killed = False
        self.pidfd: Optional[int] = None

    def kill_at(self) -> float:
        latest = self.deadline + self.after_lease
        return latest if self.stopped_at is None else min(latest, self.stopped_at + self.grace)

    def next_timer(self) -> float:
        if self.killed:
            return math.inf
        if self.stopped_at is None:
            return min(self.deadline, self.kill_at())
        return self.kill_at()


class _Server:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.buffer = b""
        self.command: Optional[_Command] = None
        self.sigchld_r: Optional[int] = None

    def send(self, **message: Any) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the supervisor is gone: the next read sees the end

    def signal(self, signum: int) -> None:
        cmd = self.command
        if cmd is None:
            return
        try:
            os.killpg(cmd.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def spawn(self, message: Dict[str, Any]) -> None:
        if self.command is not None:
            self.send(op="error", code=126, message="a command is still running")
            return
        argv: List[str] = message["argv"]
        kwargs: Dict[str, Any] = {"setsigdef": _CHILD_SIGNALS, "setsigmask": ()}
        try:
            try:
                # Its own session and process group: a terminal's Ctrl-C
                # reaches only the supervisor (which forwards it once), and
                # stopping the group stops the command's children too.
                pid = os.posix_spawnp(argv[0], argv, message["env"], setsid=True, **kwargs)
            except NotImplementedError:  # pragma: no cover - no POSIX_SPAWN_SETSID
                pid = os.posix_spawnp(argv[0], argv, message["env"], setpgroup=0, **kwargs)
        except OSError as exc:
            self.send(op="error", code=127 if isinstance(exc, FileNotFoundError) else 126,
                      message=f"cannot execute {argv[0]!r}: {exc.strerror}")
            return
        cmd = self.command = _Command(pid, message["deadline"], message["grace"], message["after_lease"])
        if hasattr(os, "pidfd_open"):
            try:
                cmd.pidfd = os.pidfd_open(pid)
            except OSError:  # pragma: no cover - a kernel before 5.3
                pass
        self.send(op="started", pid=pid)

    def handle(self, message: Dict[str, Any]) -> None:
        op = message.get("op")
        cmd = self.command
        if op == "spawn":
            self.spawn(message)
        elif op == "lease" and cmd is not None:
            cmd.deadline = max(cmd.deadline, message["deadline"])
        elif op == "stop" and cmd is not None and not cmd.killed:
            if cmd.stopped_at is None:
                cmd.stopped_at = clock()
            self.signal(message["signal"])

    def timers(self) -> None:
        cmd = self.command
        if cmd is None or cmd.killed:
            return
        now = clock()
        if cmd.stopped_at is None and now >= cmd.deadline:
            cmd.stopped_at = now
            self.signal(signal.SIGTERM)
            self.send(op="lease_ended", pid=cmd.pid)
        if now >= cmd.kill_at():
            cmd.killed = True
            self.signal(signal.SIGKILL)
            self.send(op="killed", pid=cmd.pid, after=now - (cmd.stopped_at or now))

    def reap(self) -> None:
        cmd = self.command
        if cmd is None:
            return
        if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
            # Look without reaping: while the command is a zombie its pid
            # still names the group, so what it left behind can be killed
            # without hitting a process that reused the number.
            try:
                if os.waitid(os.P_PID, cmd.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    return
            except ChildProcessError:  # pragma: no cover
                pass
            self.signal(signal.SIGKILL)
            pid, status = os.waitpid(cmd.pid, 0)
        else:  # pragma: no cover - no waitid
            pid, status = os.waitpid(cmd.pid, os.WNOHANG)
            if pid == 0:
                return
            self.signal(signal.SIGKILL)
        if cmd.pidfd is not None:
            os.close(cmd.pidfd)
        self.command = None
        self.send(op="exited", pid=cmd.pid, code=os.waitstatus_to_exitcode(status))

    def supervisor_gone(self) -> int:
        cmd = self.command
        if cmd is not None:
            self.signal(signal.SIGKILL)
            try:
                os.waitpid(cmd.pid, 0)
            except ChildProcessError:  # pragma: no cover
                pass
            sys.stderr.write(f"consul-leader: the supervisor is gone; killed the command (pid {cmd.pid})\n")
        return 0

    def serve(self) -> int:
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGTSTP", "SIGTTIN", "SIGTTOU"):
            # The supervisor decides what the command gets, and forwards it;
            # and this process must not be stopped while the command runs.
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        if not hasattr(os, "pidfd_open"):  # pragma: no cover - not Linux
            r, w = os.pipe()
            os.set_blocking(w, False)
            os.set_blocking(r, False)
            signal.set_wakeup_fd(w)
            signal.signal(signal.SIGCHLD, lambda *_: None)
            self.sigchld_r = r
        while True:
            cmd = self.command
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            if cmd is not None and cmd.pidfd is not None:
                poller.register(cmd.pidfd, select.POLLIN)
            if self.sigchld_r is not None:
                poller.register(self.sigchld_r, select.POLLIN)
            timeout: Optional[float] = None
            if cmd is not None and cmd.next_timer() < math.inf:
                timeout = max(0, math.ceil((cmd.next_timer() - clock()) * 1000))
            try:
                ready = {fd for fd, _ in poller.poll(timeout)}
            except InterruptedError:  # pragma: no cover
                ready = set()
            if self.sock.fileno() in ready:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return self.supervisor_gone()
                self.buffer += data
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    self.handle(json.loads(line))
            if self.sigchld_r is not None and self.sigchld_r in ready:
                try:
                    os.read(self.sigchld_r, 512)
                except BlockingIOError:  # pragma: no cover
                    pass
            self.timers()
            self.reap()


def serve(fd: int) -> int:
    """Run the watchdog on the socket *fd* until the supervisor closes it."""
    return _Server(fd).serve()


# -- the supervisor's side --------------------------------------------------

class SpawnFailed(Exception):
    """The command could not be started; ``code`` is the shell's (126/127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Spawned:
    """A command the watchdog started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.done = threading.Event()
        #: its exit code (negative: killed by that signal), once ``done``.
        self.code: Optional[int] = None
        #: the watchdog stopped it because the lease ended.
        self.lease_ended = False


class Watchdog:
    """The supervisor's handle on the watchdog process.

    :param grace: seconds from SIGTERM (or a forwarded signal) to SIGKILL.
    :param after_lease: seconds from the lease's end until another process
        could be elected, minus a safety slack: the command is SIGKILLed by
        then whatever the grace.
    :param on_event: called from the reader thread with each report
        (``lease_ended``, ``killed``, ``exited``), for logging.
    """

    def __init__(self, grace: float, after_lease: float, on_event: Any = None) -> None:
        self.grace = grace
        self.after_lease = after_lease
        self.on_event = on_event
        ours, theirs = socket.socketpair()
        script = os.path.abspath(__file__)
        if script.endswith(".py") and os.path.isfile(script):
            # Isolated and without site: a bare interpreter, the package not imported.
            argv = [sys.executable, "-I", "-S", script, str(theirs.fileno())]
        else:  # pragma: no cover - a zipped or frozen install
            argv = [sys.executable, "-m", "consul_leader.cli.watchdog", str(theirs.fileno())]
        # A session of its own: what stops or kills the supervisor's process
        # group (Ctrl-Z in a terminal, kill -STOP -PGID) must not reach the
        # watchdog too, or nothing would stop the command on time.
        self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        self.sock = ours
        self.gone = threading.Event()  # the watchdog process died
        self._send_lock = threading.Lock()
        self._replies: "list[Dict[str, Any]]" = []
        self._cond = threading.Condition()
        self._current: Optional[Spawned] = None
        self._last_deadline = -math.inf
        self._reader = threading.Thread(target=self._read, name="consul-leader watchdog", daemon=True)
        self._reader.start()

    def _send(self, **message: Any) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader sees the end and reports it

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._dispatch(json.loads(line))
        self.gone.set()
        with self._cond:
            current = self._current
            self._cond.notify_all()
        if current is not None and not current.done.is_set():
            # Nobody enforces the lease any more: the command must not outlive that.
            try:
                os.killpg(current.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            current.code = -signal.SIGKILL
            current.done.set()

    def _dispatch(self, message: Dict[str, Any]) -> None:
        op = message["op"]
        if op in ("started", "error"):
            with self._cond:
                if op == "started":
                    # Here, not in spawn(): its exit may be the very next line.
                    self._current = message["spawned"] = Spawned(message["pid"])
                self._replies.append(message)
                self._cond.notify_all()
            return
        current = self._current
        if current is not None and message.get("pid") == current.pid:
            if op == "lease_ended":
                current.lease_ended = True
            elif op == "exited":
                current.code = message["code"]
                with self._cond:
                    self._current = None
                current.done.set()
        if self.on_event is not None:
            self.on_event(message)

    def spawn(self, argv: List[str], env: Dict[str, str], deadline: float) -> Spawned:
        """Start *argv* with *env*, its lease ending at *deadline* (lease clock).

        :raises SpawnFailed: it cannot be executed, or the watchdog is gone."""
        self.request_spawn(argv, env, deadline)
        return self.spawned()

    def request_spawn(self, argv: List[str], env: Dict[str, str], deadline: float) -> None:
        """Ask for *argv* to be started, without waiting; :meth:`spawned`
        then waits for the answer. Never blocks on the watchdog."""
        with self._cond:
            self._replies.clear()
            self._last_deadline = deadline
            self._send(op="spawn", argv=argv, env=env, deadline=deadline, grace=self.grace,
                       after_lease=self.after_lease)

    def spawned(self) -> Spawned:
        """Wait for the answer to :meth:`request_spawn`.

        :raises SpawnFailed: it cannot be executed, or the watchdog is gone."""
        with self._cond:
            while not self._replies:
                if self.gone.is_set():
                    raise SpawnFailed(126, "the watchdog process is gone")
                self._cond.wait(1.0)
            reply = self._replies.pop()
            if reply["op"] == "error":
                raise SpawnFailed(reply["code"], reply["message"])
            spawned: Spawned = reply["spawned"]
            return spawned

    def lease(self, deadline: float) -> None:
        """The lease now ends at *deadline*; sent only when it moved on."""
        if deadline > self._last_deadline + 0.001:
            self._last_deadline = deadline
            self._send(op="lease", deadline=deadline)

    def stop(self, signum: int) -> None:
        """Send *signum* to the command's group now; SIGKILL it after the grace."""
        self._send(op="stop", signal=signum)

    def close(self) -> None:
        """End the watchdog process (it kills a command that still runs)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()
            self.process.wait()
        self._reader.join(5)


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
