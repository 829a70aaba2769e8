"""The ``consul-leader`` command.

``run KEY -- CMD`` runs a command only while this process leads (like
``consul lock``, but a crashed leader is replaced in seconds, not a minute);
``status KEY`` shows who leads; ``watch KEY`` prints each change of leader;
``demo`` runs :mod:`consul_leader.demo`. Connection options and environment
variables are those of the ``consul`` CLI. See ``consul-leader --help`` and
the "Command line" page of the docs for the exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._watchdog import Spawned, SpawnFailed, Watchdog
from .candidate import Candidate
from .client import ConsulClient
from .config import ConsulConfig
from .errors import ConfigurationError, ConsulLeaderError, LockHeld, PermissionDenied
from .follower import Follower, LeaderInfo
from .session import Timing, lease_clock
from .validation import check_key

__all__ = ["main"]

log = logging.getLogger("consul_leader")

EXIT_OK = 0
#: ``status``: nobody holds the lock.
EXIT_NO_LEADER = 1
#: Bad usage or configuration (argparse's own code).
EXIT_USAGE = 2
#: Consul could not be reached or answered with an error.
EXIT_UNAVAILABLE = 69
#: ``run --no-wait``: the lock is held by another process.
EXIT_LOCK_HELD = 75
#: ``run --once``: leadership was lost, so the command was stopped.
EXIT_DEPOSED = 76
#: ``run``: the watchdog process that enforces the lease on the command died.
EXIT_SOFTWARE = 70
#: The ACL token was refused.
EXIT_PERMISSION = 77
#: The command exists but cannot be executed / cannot be found (as in a shell).
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

EXIT_CODES = f"""\
exit codes:
  run      the command's exit status, with --once when it exits by itself
           while leading, or after SIGINT/SIGTERM was forwarded to it
           (128+N when it died of signal N); 128+N on signal N when no command
           ran; {EXIT_DEPOSED} with --once when leadership was lost and the command stopped;
           {EXIT_LOCK_HELD} with --no-wait when another process holds the lock, with --timeout when
           not elected in time; {EXIT_SOFTWARE} the watchdog process died (the command was killed);
           {EXIT_CANNOT_EXECUTE}/{EXIT_NOT_FOUND} the command cannot be executed / is not found
  status   {EXIT_OK} someone leads, {EXIT_NO_LEADER} nobody leads
  watch    {EXIT_OK} after SIGINT/SIGTERM
  all      {EXIT_USAGE} usage or configuration error, {EXIT_UNAVAILABLE} Consul unreachable or erring,
           {EXIT_PERMISSION} ACL token refused
"""

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``consul-leader`` command.

    :param argv: the arguments, without the program name; default ``sys.argv[1:]``.
    :returns: the exit code (see ``consul-leader --help``).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(args_list[1:])
    command: List[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, command = args_list[:cut], args_list[cut + 1:]
    parser = _parser()
    args = parser.parse_args(args_list)
    if command and args.handler is not _run:
        parser.error(f"{args.command}: unexpected arguments after --")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(args.handler(args, command))
    except ConfigurationError as exc:
        print(f"consul-leader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionDenied as exc:
        print(f"consul-leader: {exc}", file=sys.stderr)
        return EXIT_PERMISSION
    except ConsulLeaderError as exc:
        print(f"consul-leader: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from ``2.5`` (seconds) or a duration as ``consul lock`` (Go)
    writes it: ``500ms``, ``1s``, ``1m30s``, ``3h``."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?|\.\d+", text):
        seconds = float(text)
    else:
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(text):
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: give seconds (2.5) or a duration such as 500ms, 10s, 1m30s, 3h")
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be 0 or more")
    return seconds


def _parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = connection.add_argument_group("connection (as the consul CLI; defaults from its environment variables)")
    group.add_argument("-http-addr", "--http-addr", "--address", dest="address", metavar="ADDR",
                       help="the agent, host:port or https://host:port (CONSUL_HTTP_ADDR; default 127.0.0.1:8500)")
    group.add_argument("-token", "--token", help="ACL token (CONSUL_HTTP_TOKEN)")
    group.add_argument("-token-file", "--token-file", metavar="FILE",
                       help="file holding the ACL token (CONSUL_HTTP_TOKEN_FILE)")
    group.add_argument("-datacenter", "--datacenter", metavar="DC", help="datacenter of the key and session")
    group.add_argument("-ca-file", "--ca-file", metavar="FILE", help="CA bundle for TLS (CONSUL_CACERT)")
    group.add_argument("-client-cert", "--client-cert", metavar="FILE",
                       help="client certificate for TLS (CONSUL_CLIENT_CERT)")
    group.add_argument("-client-key", "--client-key", metavar="FILE",
                       help="client certificate's key (CONSUL_CLIENT_KEY)")
    connection.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                            help="log to stderr from this level (default: info)")

    parser = argparse.ArgumentParser(
        prog="consul-leader", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Leader election on Consul: run a command only while leading, see who leads.",
        epilog=EXIT_CODES)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace, List[str]], int], help: str,
                usage: Optional[str] = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[connection], help=help, description=help, usage=usage,
                                  allow_abbrev=False, epilog=EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("key", metavar="KEY", help="the Consul KV key that is the lock, e.g. service/x/leader")
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", _run, "run CMD only while this process leads KEY; stop it when leadership is lost",
                  usage="consul-leader run [options] KEY -- CMD [ARG ...]")
    run.add_argument("--identity", help="what this process writes into the key (default hostname:pid)")
    run.add_argument("--ttl", type=duration, default=3.0, metavar="DURATION",
                     help="health check TTL: the one knob for failover speed (default 3s)")
    run.add_argument("--lock-delay", type=duration, metavar="DURATION",
                     help="Consul lock-delay after a leader's session is invalidated (default: the lease plus "
                          "--grace plus 0.5s, so the command is dead before another process can be elected; "
                          "at least --ttl, at most 60s)")
    run.add_argument("--grace", type=duration, metavar="DURATION",
                     help="time between SIGTERM and SIGKILL when stopping the command (default 5s)")
    run.add_argument("--timeout", type=duration, metavar="DURATION",
                     help=f"wait at most this long to be elected, then exit with {EXIT_LOCK_HELD} "
                          "(as consul lock -timeout; 0, the default, waits for as long as it takes)")
    run.add_argument("--once", action="store_true",
                     help="exit after the first term instead of waiting for the next one")
    run.add_argument("--no-wait", action="store_true",
                     help=f"exit with {EXIT_LOCK_HELD} instead of waiting when another process holds the lock")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on this port (needs consul-leader[prometheus])")
    run.add_argument("--health-port", type=int, metavar="PORT",
                     help="serve Kubernetes probes on this port: GET /readyz answers 200 on the leader and 503 "
                          "elsewhere, GET /livez 200 while the election runs and its heartbeat is current")

    status = command("status", _status, "show who leads KEY, since when, and the fencing token")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    watch = command("watch", _watch, "print a line each time the leader of KEY changes, until SIGINT/SIGTERM")
    watch.add_argument("--json", action="store_true", help="print one JSON object per line")
    commands.add_parser("demo", help="run the demo: candidates on a throwaway Consul agent (demo --help)",
                        add_help=False)
    return parser


def _connection(args: argparse.Namespace) -> Dict[str, Any]:
    """Candidate/Follower keyword arguments from the connection options;
    ConsulConfig.from_args fills the rest from the environment."""
    if args.client_key and not args.client_cert:
        raise ConfigurationError("-client-key needs -client-cert")
    cert: Any = None
    if args.client_cert:
        cert = (args.client_cert, args.client_key) if args.client_key else args.client_cert
    token = args.token
    if token is None and args.token_file:
        # Read where the library reads CONSUL_HTTP_TOKEN_FILE, with the same checks.
        token = ConsulConfig.resolve(address=args.address, token_file=args.token_file).token
    return {"address": args.address, "token": token, "datacenter": args.datacenter, "verify": args.ca_file,
            "cert": cert}


def _iso(unix: Optional[float]) -> Optional[str]:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()


def _info_dict(key: str, info: LeaderInfo) -> Dict[str, Any]:
    return {"key": key, "leader": info.identity, "since": info.since, "since_iso": _iso(info.since),
            "fencing_token": info.modify_index, "session": info.session}


# -- status -----------------------------------------------------------------

def _status(args: argparse.Namespace, command: List[str]) -> int:
    key = check_key(args.key)
    client = ConsulClient(ConsulConfig.from_args(**_connection(args)))
    _, entry = client.get_key(key)
    info = LeaderInfo.from_entry(entry)
    if args.json:
        print(json.dumps(_info_dict(key, info)))
    elif info.identity is None:
        print(f"key:           {key}\nleader:        (none)")
    else:
        since = "unknown" if info.since is None else f"{_iso(info.since)} ({_now() - info.since:.1f} s ago)"
        print(f"key:           {key}\nleader:        {info.identity}\nsince:         {since}\n"
              f"fencing token: {info.modify_index}\nsession:       {info.session}")
    return EXIT_OK if info.identity is not None else EXIT_NO_LEADER


# -- watch ------------------------------------------------------------------

class _Interrupted(Exception):
    pass


def _watch(args: argparse.Namespace, command: List[str]) -> int:
    follower = Follower(check_key(args.key), **_connection(args))

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted()

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    follower.start()
    try:
        for identity in follower.changes():
            info = follower.info()
            if info.identity != identity:  # changed again meanwhile; the next line shows it
                info = LeaderInfo(identity=identity)
            if args.json:
                print(json.dumps({"time": _iso(_now()), **_info_dict(follower.key, info)}), flush=True)
            elif identity is None:
                print(f"{_iso(_now())} (no leader)", flush=True)
            else:
                print(f"{_iso(_now())} {identity} (fencing token {info.modify_index})", flush=True)
    except _Interrupted:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        follower.stop()
    return EXIT_OK


# -- run --------------------------------------------------------------------

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

    def __init__(self, candidate: Candidate, command: List[str], watchdog: Watchdog, once: bool) -> None:
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
                print(f"consul-leader run: {exc}", file=sys.stderr)
                child = None
                self.last = (exc.code, False)
        if child is not None:
            log.info("consul-leader run: started %s (pid %d) as leader of %r, fencing token %d",
                     self.command[0], child.pid, self.candidate.key, token)
            self._supervise(child, stop_event)
        self.wake.set()
        if self.once or self.shutting_down:
            # Keep the term (and the lock) until the main thread stops the
            # candidate, so that no next term starts meanwhile.
            self.release.wait()

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


def _run(args: argparse.Namespace, command: List[str]) -> int:
    if not command:
        print("consul-leader run: give the command after --, e.g. run KEY -- my-job --flag", file=sys.stderr)
        return EXIT_USAGE
    if os.name != "posix":
        raise ConfigurationError("run needs a POSIX system (process groups and signals)")
    unusable = _check_command(command)
    if unusable is not None:
        print(f"consul-leader run: {command[0]!r}: " +
              ("command not found" if unusable == EXIT_NOT_FOUND else "not executable"), file=sys.stderr)
        return unusable
    timing = _timing(args)
    candidate = Candidate(args.key, identity=args.identity, ttl=args.ttl, lock_delay=timing.lock_delay,
                          wait=not args.no_wait, **_connection(args))
    grace = DEFAULT_GRACE if args.grace is None else args.grace
    log.info("consul-leader run: %r with ttl %gs, lease %gs, grace %gs, lock-delay %gs (every other candidate of "
             "this key needs the same ttl and lock-delay)", args.key, timing.check_ttl, timing.lease, grace,
             timing.lock_delay)
    # Started before the election, so that no process start lies on the
    # handover path; it lives as long as this process.
    watchdog = Watchdog(grace, timing.lock_delay - timing.lease - SAFETY_SLACK)
    runner = _Runner(candidate, command, watchdog, args.once)
    watchdog.on_event = runner.on_event
    candidate._term_hook = runner.begin_term
    if args.metrics_port is not None:
        from .metrics import register, start_http_server

        register(candidate)
        start_http_server(args.metrics_port)
    probes = None
    if args.health_port is not None:
        from .contrib.readiness import serve_readiness

        try:
            probes = serve_readiness(candidate, args.health_port)
        except OSError as exc:
            watchdog.close()
            raise ConfigurationError(f"--health-port {args.health_port}: cannot listen: {exc.strerror}") from exc
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code: Optional[int] = None
    give_up = None if not args.timeout else time.monotonic() + args.timeout  # 0: no limit, as consul lock
    try:
        candidate.run(runner.job, block=False)
        while code is None:
            wait = 0.2 if give_up is None else max(0.0, min(0.2, give_up - time.monotonic()))
            runner.wake.wait(wait)
            runner.wake.clear()
            if runner.signum is not None:
                status = runner.shut_down(runner.signum)
                code = 128 + runner.signum if status is None else status
            elif watchdog.gone.is_set():
                print("consul-leader run: the watchdog process died; leaving the election", file=sys.stderr)
                code = EXIT_SOFTWARE
            elif args.once and runner.last is not None:
                status, deposed = runner.last
                code = EXIT_DEPOSED if deposed else status
            elif give_up is not None and time.monotonic() >= give_up and not _started(runner):
                print(f"consul-leader run: not elected leader of {candidate.key!r} within {args.timeout:g}s",
                      file=sys.stderr)
                code = EXIT_LOCK_HELD
            else:
                try:
                    candidate.wait_for_leadership(0)
                except LockHeld as exc:
                    print(f"consul-leader run: {exc}", file=sys.stderr)
                    code = EXIT_LOCK_HELD
    finally:
        runner.release.set()
        if runner.child is not None:  # leaving on an error: never leave the command running
            runner.stop_command(signal.SIGTERM)
        else:
            with runner.lock:
                runner.shutting_down = True
        candidate.stop()
        watchdog.close()
        if probes is not None:
            probes.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _started(runner: _Runner) -> bool:
    """Whether a term began; if not, none will (``--timeout`` ran out)."""
    with runner.lock:
        if runner.terms:
            return True
        runner.shutting_down = True
        return False


if __name__ == "__main__":
    sys.exit(main())
