"""``consul-leader run KEY -- CMD``: run a command only while this process
leads *KEY*, through the watchdog process (:mod:`.watchdog`) that enforces
the lease on it."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from .. import signals
from ..candidate import Candidate
from ..errors import ConfigurationError, ConsulLeaderError, ConsulUnavailable, LockHeld
from ..session import Timing, lease_clock
from .backoff import CrashBackoff
from .codes import (
    EXIT_CANNOT_EXECUTE,
    EXIT_CONSUL_LOCK,
    EXIT_DEPOSED,
    EXIT_LOCK_HELD,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .commands import connection
from .consul_lock import LOCK_KEY, ConsulLockConflict, guard, taken_by_consul_lock
from .watchdog import Spawned, SpawnFailed, Watchdog

__all__ = ["DEFAULT_GRACE", "SAFETY_SLACK", "run_command", "run_timing"]

log = logging.getLogger("consul_leader")


def _check_command(command: List[str]) -> Optional[int]:
    """The shell's exit code if *command* cannot run, else None."""
    name = command[0]
    if os.sep in name:
        if not os.path.exists(name):
            return EXIT_NOT_FOUND
        return None if os.path.isfile(name) and os.access(name, os.X_OK) else EXIT_CANNOT_EXECUTE
    return None if shutil.which(name) else EXIT_NOT_FOUND


class _Runner:
    """Starts the command (through the watchdog process) each time the
    candidate is elected, keeps the watchdog told of the lease, and stops
    the command when leadership ends; ``job`` runs as the candidate's job,
    the rest in the main thread."""

    def __init__(self, candidate: Candidate, command: List[str], watchdog: Watchdog, once: bool,
                 what: str) -> None:
        self.candidate = candidate
        self.command = command
        self.watchdog = watchdog
        self.once = once
        self.wake = threading.Event()  # the main thread has something to look at
        self.release = threading.Event()  # the main thread lets the job return
        self.lock = threading.Lock()
        self.child: Optional[Spawned] = None
        self.shutting_down = False
        self.signum: Optional[int] = None
        self.terms = 0
        #: (exit code, whether leadership ended it) of the last command run.
        self.last: Optional[tuple[int, bool]] = None
        #: the pid of the command that shut_down() forwarded the signal to.
        self.forwarded: Optional[int] = None
        #: a term whose command begin_term() asked the watchdog for.
        self.requested: Optional[int] = None
        self.backoff = CrashBackoff(what)
        self.env = dict(os.environ, CONSUL_LEADER_KEY=candidate.key, CONSUL_LEADER_IDENTITY=candidate.identity)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.wake.set()

    def on_event(self, event: Dict[str, Any]) -> None:
        """A report of the watchdog process (logged here, it has no logger)."""
        op, pid = event["op"], event.get("pid")
        if op == "lease_ended":
            log.warning("consul-leader run: the lease on %r ended; SIGTERM to pid %d", self.candidate.key, pid)
        elif op == "killed":
            log.warning("consul-leader run: pid %s still runs %gs after signal %d; killing it", pid,
                        round(event["after"], 1), signal.SIGTERM if self.signum is None else self.signum)
        elif op == "exited" and event["code"] < 0:
            log.info("consul-leader run: pid %s ended by signal %d", pid, -event["code"])

    def lease_deadline(self) -> float:
        """When the lease ends, on the lease clock; never later than the truth."""
        now = lease_clock()
        return now + self.candidate.health().lease_remaining

    def begin_term(self, token: int, deadline: float) -> None:
        """On the election thread, the moment a term begins: ask the
        watchdog process for the command at once (it answers to :meth:`job`)."""
        with self.lock:
            if self.shutting_down or (self.once and self.terms):
                return
            self.watchdog.request_spawn(self.command, dict(self.env, CONSUL_LEADER_FENCING_TOKEN=str(token)),
                                        deadline)
            self.requested = token

    def job(self, stop_event: threading.Event) -> None:
        token = self.candidate.fencing_token
        with self.lock:
            requested, self.requested = self.requested, None
            if self.shutting_down or token is None or (self.once and self.terms):
                if requested is not None:
                    self._abandon_spawn()
                return
            self.terms += 1
            try:
                if requested is not None and requested != token:
                    self._abandon_spawn()  # asked for in a term that ended before its job ran
                if requested != token:
                    self.watchdog.request_spawn(self.command, dict(self.env, CONSUL_LEADER_FENCING_TOKEN=str(token)),
                                                self.lease_deadline())
                child = self.child = self.watchdog.spawned()
            except SpawnFailed as exc:
                say(f"{exc}")
                child = None
                self.last = (exc.code, False)
        started = time.monotonic()
        if child is not None:
            log.info("consul-leader run: started %s (pid %d) as leader of %r, fencing token %d",
                     self.command[0], child.pid, self.candidate.key, token)
            self._supervise(child, stop_event)
        self.wake.set()
        if self.once or self.shutting_down:
            # Keep the term (and the lock) until the main thread stops the
            # candidate, so that no next term starts meanwhile.
            self.release.wait()
        elif self.last is not None and not self.last[1] and not stop_event.is_set():
            # The command exited by itself: the term ends when this returns.
            # After a crash at start, wait first, so that a crash loop does
            # not take and release the lock every few seconds.
            wait = self.backoff.after_exit(time.monotonic() - started, None if child is None else self.last[0])
            if wait:
                stop_event.wait(wait)

    def term_ended(self, candidate: Candidate, **kwargs: Any) -> None:
        """``deposed`` receiver: the candidate releases the lock only after
        its ``deposed`` receivers returned. A command asked for as the term
        began whose job never ran (the lease was over before the job could
        start: the process was paused) has nobody else to wait for it: stop
        it and wait for it here, before the lock can go to another."""
        with self.lock:
            requested, self.requested = self.requested, None
        if requested is not None:
            log.warning("consul-leader run: the term of %r (fencing token %d) ended before its command could be "
                        "supervised; stopping the command before releasing the lock", self.candidate.key, requested)
            self._abandon_spawn()

    def _abandon_spawn(self) -> None:
        """A command was asked for, but the term is not to run one after all
        (stopping meanwhile): stop it as soon as it started."""
        try:
            child = self.watchdog.spawned()
        except SpawnFailed:
            return
        self.watchdog.stop(signal.SIGTERM)
        child.done.wait()

    def _supervise(self, child: Spawned, stop_event: threading.Event) -> None:
        # The watchdog enforces the lease by itself; this loop only tells it
        # of renewals, and ends the command early when the term ends before
        # the lease does (lock lost, resigned).
        stopped = False
        while not child.done.wait(_LEASE_PUSH):
            if self.shutting_down:
                with self.lock:
                    # Started while shut_down() looked: it could not forward the signal.
                    forward = stop_event.is_set() and self.forwarded != child.pid
                    if forward:
                        self.forwarded = child.pid
                if forward:
                    self.watchdog.stop(self.signum or signal.SIGTERM)
            elif not stopped and (stop_event.is_set() or not self.candidate.is_leader()):
                stopped = True
                log.warning("consul-leader run: leadership of %r ended; stopping pid %d", self.candidate.key,
                            child.pid)
                self.watchdog.stop(signal.SIGTERM)
            if not stopped:
                self.watchdog.lease(self.lease_deadline())
        code = child.code if child.code is not None else 128 + signal.SIGKILL
        code = code if code >= 0 else 128 - code
        deposed = (stopped or child.lease_ended) and not self.shutting_down
        with self.lock:
            self.child = None
            self.last = (code, deposed)
        if self.watchdog.gone.is_set():
            log.error("consul-leader run: the watchdog process died; killed pid %d", child.pid)
        elif not deposed:
            log.info("consul-leader run: pid %d exited with %d", child.pid, code)

    def shut_down(self, signum: int) -> Optional[int]:
        """On SIGINT/SIGTERM: forward *signum* to the command now, and leave
        the election, which waits for the command (the job) to end before
        it releases the lock. Returns the command's exit code, or None when
        none ran. The release follows the command's exit directly (the
        job's thread, then the election thread), not through this thread."""
        with self.lock:
            self.shutting_down = True
            child = self.child
            if child is not None:
                self.forwarded = child.pid
        if child is not None:
            log.info("consul-leader run: sending signal %d to pid %d", signum, child.pid)
            self.watchdog.stop(signum)
        self.release.set()
        self.candidate.stop()
        if child is None:
            return None
        child.done.wait()  # already: the term ended after the job, which waited for it
        code = child.code if child.code is not None else -signal.SIGKILL
        return code if code >= 0 else 128 - code

    def stop_command(self, signum: int) -> Optional[int]:
        """Send *signum* to the command's group (SIGKILL after the grace) and
        wait for it to end; its exit code, or None when none runs."""
        with self.lock:
            self.shutting_down = True
            child = self.child
        if child is None:
            return None
        log.info("consul-leader run: sending signal %d to pid %d", signum, child.pid)
        self.watchdog.stop(signum)
        child.done.wait()
        code = child.code if child.code is not None else -signal.SIGKILL
        return code if code >= 0 else 128 - code


def say(message: str) -> None:
    """Tell the user *message* on stderr, not through the log: what ``run``
    answers, as opposed to what it reports along the way."""
    print(f"consul-leader run: {message}", file=sys.stderr)


#: How often the job thread tells the watchdog of the lease's renewals: far
#: below the heartbeat, so the watchdog's copy of the deadline lags little.
_LEASE_PUSH = 0.05

#: Kept between the SIGKILL and the earliest moment another process can be
#: elected: covers the watchdog's wake-up and the kill's delivery.
SAFETY_SLACK = 0.5

#: Seconds from SIGTERM to SIGKILL when ``--grace`` is not given.
DEFAULT_GRACE = 5.0


def run_timing(ttl: float, grace: Optional[float] = None, lock_delay: Optional[float] = None) -> Timing:
    """The election's durations of ``run --ttl TTL [--grace GRACE]
    [--lock-delay LOCK_DELAY]``, with a lock-delay long enough that the
    command, stopped at the lease's end, is dead before anyone else can win.
    Library candidates of the same key need its ``lock_delay`` too.

    Another process can be elected no earlier than ``lock_delay - lease``
    after the lease's end (an invalidated session, see docs/cli.rst), so the
    command gets SIGTERM at the lease's end and must be gone ``grace`` later:
    ``lock_delay >= lease + grace + slack``.

    :param grace: seconds from SIGTERM to SIGKILL; None: the default, 5 s.
    :raises ConfigurationError: *lock_delay* too short for *grace*, or the
        lock-delay *grace* needs above Consul's 60 s."""
    given = "" if grace is not None else " (the default)"
    grace = DEFAULT_GRACE if grace is None else grace
    base = Timing.from_ttl(ttl, lock_delay=lock_delay)
    need = base.lease + grace + SAFETY_SLACK
    if base.lock_delay >= need - 1e-9:
        return base
    room = max(0.0, base.lock_delay - base.lease - SAFETY_SLACK)
    if lock_delay is not None:
        raise ConfigurationError(
            f"--grace {grace:g}s{given} is longer than --lock-delay {base.lock_delay:g}s with --ttl {ttl:g}s "
            f"allows: another process can be elected {base.lock_delay - base.lease:g}s after this one's lease "
            f"({base.lease:g}s) ends, and the command must be dead by then ({SAFETY_SLACK:g}s to spare). Use "
            f"--grace {math.floor(room * 10) / 10:g} or less, or --lock-delay {math.ceil(need * 10) / 10:g} or "
            f"more (at most 60), or leave --lock-delay out to have it derived from --grace.")
    if need > 60:
        raise ConfigurationError(
            f"--grace {grace:g}s{given} with --ttl {ttl:g}s needs a lock-delay of {need:g}s (lease "
            f"{base.lease:g}s + grace + {SAFETY_SLACK:g}s), more than Consul's 60s: use --grace "
            f"{math.floor((60 - base.lease - SAFETY_SLACK) * 10) / 10:g} or less, or a smaller --ttl.")
    return Timing.from_ttl(ttl, lock_delay=math.ceil(need * 10) / 10)


def _timing(args: argparse.Namespace) -> Timing:
    return run_timing(args.ttl, args.grace, args.lock_delay)


def run_command(args: argparse.Namespace, command: List[str]) -> int:
    """``consul-leader run``: the exit code."""
    if os.name != "posix":
        raise ConfigurationError("run needs a POSIX system (process groups and signals)")
    if args.limit != 1:
        raise ConfigurationError(f"-n {args.limit}: consul-leader run elects one leader (-n 1); consul lock's "
                                 "semaphores (more than one holder) are not supported: keep consul lock -n for "
                                 "this prefix")
    what = command[0]
    if args.shell:
        # As consul lock -shell: the words joined into one script for $SHELL -c.
        command = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(command)]
    unusable = _check_command(command)
    if unusable is not None:
        hint = ""
        if unusable == EXIT_NOT_FOUND and " " in command[0]:
            hint = " (to run it through a shell, as consul lock does by default, add -shell)"
        say(f"{command[0]!r}: " + ("command not found" if unusable == EXIT_NOT_FOUND else "not executable") + hint)
        return unusable
    timing = _timing(args)
    candidate = Candidate(args.key, identity=args.identity, ttl=args.ttl, lock_delay=timing.lock_delay,
                          wait=not args.no_wait, **connection(args))
    grace = DEFAULT_GRACE if args.grace is None else args.grace
    log.info("consul-leader run: %r with ttl %gs, lease %gs, grace %gs, lock-delay %gs (every other candidate of "
             "this key needs the same ttl and lock-delay)", args.key, timing.check_ttl, timing.lease, grace,
             timing.lock_delay)
    # Started before the election, so that no process start lies on the
    # handover path; it lives as long as this process.
    watchdog = Watchdog(grace, timing.lock_delay - timing.lease - SAFETY_SLACK)
    runner = _Runner(candidate, command, watchdog, args.once, what)
    watchdog.on_event = runner.on_event
    candidate.set_term_hook(runner.begin_term)
    candidate.on_deposed(runner.term_ended)
    if args.metrics_port is not None:
        from ..metrics import register, start_http_server

        register(candidate)
        start_http_server(args.metrics_port)
    probes = None
    if args.health_port is not None:
        from ..contrib.readiness import serve_readiness

        try:
            probes = serve_readiness(candidate, args.health_port)
        except OSError as exc:
            watchdog.close()
            raise ConfigurationError(f"--health-port {args.health_port}: cannot listen: {exc.strerror}") from exc
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code: Optional[int] = None
    give_up = None if not args.timeout else time.monotonic() + args.timeout  # 0: no limit, as consul lock
    try:
        code = _guard(runner, give_up)
        if code is None:
            candidate.run(runner.job, block=False)
        while code is None:
            wait = 0.2 if give_up is None else max(0.0, min(0.2, give_up - time.monotonic()))
            runner.wake.wait(wait)
            runner.wake.clear()
            if runner.signum is not None:
                status = runner.shut_down(runner.signum)
                code = 128 + runner.signum if status is None else status
            elif watchdog.gone.is_set():
                say("the watchdog process died; leaving the election")
                code = EXIT_SOFTWARE
            elif args.once and runner.last is not None:
                status, deposed = runner.last
                code = EXIT_DEPOSED if deposed else status
                if args.child_exit_code and not deposed:
                    code = EXIT_OK if status == 0 else EXIT_USAGE  # consul lock -child-exit-code's codes
            elif give_up is not None and time.monotonic() >= give_up and not _started(runner):
                code = _not_elected(candidate, args.timeout)
            else:
                try:
                    candidate.wait_for_leadership(0)
                except LockHeld as exc:
                    say(f"{exc}")
                    code = EXIT_LOCK_HELD
                code = _consul_lock_took_over(candidate) if code is None else code
    finally:
        runner.release.set()
        if runner.child is not None:  # leaving on an error: never leave the command running
            runner.stop_command(signal.SIGTERM)
        else:
            with runner.lock:
                runner.shutting_down = True
        candidate.stop()
        signals.deposed.disconnect(runner.term_ended)
        watchdog.close()
        if probes is not None:
            probes.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _guard(runner: _Runner, give_up: Optional[float]) -> Optional[int]:
    """Check that ``consul lock`` does not use the key (see :mod:`.consul_lock`)
    before running for election; an unreachable Consul is waited for, as the
    election would. The exit code if ``run`` ends here, else None."""
    candidate = runner.candidate
    said = False
    while True:
        try:
            also = guard(candidate.client, candidate.key)
            if also is not None:
                candidate.lock_with(*also)
            return None if runner.signum is None else 128 + runner.signum
        except ConsulLockConflict as exc:
            say(f"{exc}")
            return EXIT_CONSUL_LOCK
        except ConsulUnavailable as exc:
            if give_up is not None and time.monotonic() >= give_up:
                say(f"could not reach Consul within the --timeout: {exc}")
                return EXIT_UNAVAILABLE
            if not said:
                said = True
                log.warning("consul-leader run: %s; trying again every second", exc)
        runner.wake.wait(1.0 if give_up is None else max(0.0, min(1.0, give_up - time.monotonic())))
        runner.wake.clear()
        if runner.signum is not None:
            return 128 + runner.signum


def _consul_lock_took_over(candidate: Candidate) -> Optional[int]:
    """EXIT_CONSUL_LOCK if the election cannot take its lock because
    ``consul lock`` holds the key it is taken with; else None."""
    error = candidate.health().last_error
    if error is None or f"{candidate.key}/{LOCK_KEY}" not in error:
        return None  # not refused for that key (AlsoLockHeld names it)
    try:
        why = taken_by_consul_lock(candidate.client, candidate.key)
    except ConsulLeaderError:
        return None  # the election's own retries say what fails
    if why is None:
        return None
    say(why)
    return EXIT_CONSUL_LOCK


def _not_elected(candidate: Candidate, timeout: float) -> int:
    """``--timeout`` ran out before a term began: say why, and the code."""
    health = candidate.health()
    if not health.ok and health.last_error is not None:
        say(f"could not run for leadership of {candidate.key!r} within {timeout:g}s: Consul is unreachable or "
            f"failing ({health.last_error})")
        return EXIT_UNAVAILABLE
    say(f"not elected leader of {candidate.key!r} within {timeout:g}s")
    return EXIT_LOCK_HELD


def _started(runner: _Runner) -> bool:
    """Whether a term began; if not, none will (``--timeout`` ran out)."""
    with runner.lock:
        if runner.terms:
            return True
        runner.shutting_down = True
        return False
