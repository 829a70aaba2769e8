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
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

from .candidate import Candidate
from .client import ConsulClient, ConsulConfig
from .errors import ConfigurationError, ConsulLeaderError, LockHeld, PermissionDenied
from .follower import Follower, LeaderInfo
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
           {EXIT_LOCK_HELD} with --no-wait when another process holds the lock;
           {EXIT_CANNOT_EXECUTE}/{EXIT_NOT_FOUND} the command cannot be executed / is not found
  status   {EXIT_OK} someone leads, {EXIT_NO_LEADER} nobody leads
  watch    {EXIT_OK} after SIGINT/SIGTERM
  all      {EXIT_USAGE} usage or configuration error, {EXIT_UNAVAILABLE} Consul unreachable or erring,
           {EXIT_PERMISSION} ACL token refused
"""

# On Linux the command is started by this shim, which stays as the leader of
# the command's process group: the kernel signals it (PR_SET_PDEATHSIG) when
# consul-leader dies, even of SIGKILL, and it then kills the whole group, so
# that a crashed supervisor cannot leave the command (or its children)
# running while another process leads. Signals for the command reach it
# through the group; the shim ignores them and passes the command's status on.
_SHIM = """\
import ctypes, os, signal, sys
def parent_died(*_):
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGUSR1, parent_died)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda *_: None)
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    parent_died()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ,
                          setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1))
except OSError as exc:
    sys.stderr.write(f"consul-leader: cannot execute {sys.argv[2]!r}: {exc.strerror}\\n")
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code & 255)
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
    run.add_argument("--ttl", type=float, default=3.0,
                     help="health check TTL in seconds: a crashed leader is replaced about 2*TTL later "
                          "(default 3; consul lock takes ~45 s)")
    run.add_argument("--lock-delay", type=float, metavar="SECONDS",
                     help="Consul lock-delay after a leader's session is invalidated (default: TTL)")
    run.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                     help="seconds between SIGTERM and SIGKILL when stopping the command (default 5)")
    run.add_argument("--once", action="store_true",
                     help="exit after the first term instead of waiting for the next one")
    run.add_argument("--no-wait", action="store_true",
                     help=f"exit with {EXIT_LOCK_HELD} instead of waiting when another process holds the lock")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on this port (needs consul-leader[prometheus])")

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
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip() or None
        except OSError as exc:
            raise ConfigurationError(f"-token-file {args.token_file!r} cannot be read: {exc.strerror}") from None
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
    """Starts the command each time the candidate is elected and stops it
    when leadership ends; ``job`` runs as the candidate's job, the rest in
    the main thread."""

    def __init__(self, candidate: Candidate, command: List[str], grace: float, once: bool) -> None:
        self.candidate = candidate
        self.command = command
        self.grace = grace
        self.once = once
        self.wake = threading.Event()  # the main thread has something to look at
        self.release = threading.Event()  # the main thread lets the job return
        self.lock = threading.Lock()
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.shutting_down = False
        self.signum: Optional[int] = None
        self.terms = 0
        #: (exit code, whether leadership ended it) of the last command run.
        self.last: Optional[tuple[int, bool]] = None

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.wake.set()

    def job(self, stop_event: threading.Event) -> None:
        token = self.candidate.fencing_token
        with self.lock:
            if self.shutting_down or token is None or (self.once and self.terms):
                return
            self.terms += 1
            env = dict(os.environ, CONSUL_LEADER_KEY=self.candidate.key, CONSUL_LEADER_FENCING_TOKEN=str(token),
                       CONSUL_LEADER_IDENTITY=self.candidate.identity)
            argv = self.command
            if sys.platform.startswith("linux"):
                argv = [sys.executable, "-c", _SHIM, str(os.getpid()), *argv]
            # Its own process group: a terminal's Ctrl-C reaches only us (we
            # forward it once), and stopping the group stops its children too.
            child = self.child = subprocess.Popen(argv, env=env, start_new_session=True)
        log.info("consul-leader run: started %s (pid %d) as leader of %r, fencing token %d",
                 self.command[0], child.pid, self.candidate.key, token)
        while child.poll() is None and not stop_event.is_set() and self.candidate.is_leader():
            stop_event.wait(0.1)
        deposed = child.poll() is None and not self.shutting_down
        if deposed:
            log.warning("consul-leader run: leadership of %r ended; stopping pid %d", self.candidate.key, child.pid)
            self.terminate(child, signal.SIGTERM)
        status = child.wait()
        code = status if status >= 0 else 128 - status
        with self.lock:
            self.child = None
            self.last = (code, deposed)
        if not deposed:
            log.info("consul-leader run: pid %d exited with %d", child.pid, code)
        self.wake.set()
        if self.once or self.shutting_down:
            # Keep the term (and the lock) until the main thread stops the
            # candidate, so that no next term starts meanwhile.
            self.release.wait()

    def terminate(self, child: "subprocess.Popen[bytes]", signum: int) -> None:
        """Send *signum* to the command's process group; SIGKILL it after the grace period."""
        self._kill(child, signum)
        try:
            child.wait(self.grace)
        except subprocess.TimeoutExpired:
            log.warning("consul-leader run: pid %d still runs %gs after signal %d; killing it", child.pid,
                        self.grace, signum)
            self._kill(child, signal.SIGKILL)
            child.wait()

    @staticmethod
    def _kill(child: "subprocess.Popen[bytes]", signum: int) -> None:
        if child.poll() is not None:
            return
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    def shutdown(self) -> Optional[int]:
        """Forward the signal received to the command and wait for it; its exit code, or None."""
        with self.lock:
            self.shutting_down = True
            child = self.child
        assert self.signum is not None
        if child is None:
            return None
        log.info("consul-leader run: forwarding signal %d to pid %d", self.signum, child.pid)
        self.terminate(child, self.signum)
        status = child.wait()
        return status if status >= 0 else 128 - status


def _run(args: argparse.Namespace, command: List[str]) -> int:
    if not command:
        print("consul-leader run: give the command after --, e.g. run KEY -- my-job --flag", file=sys.stderr)
        return EXIT_USAGE
    unusable = _check_command(command)
    if unusable is not None:
        print(f"consul-leader run: {command[0]!r}: " +
              ("command not found" if unusable == EXIT_NOT_FOUND else "not executable"), file=sys.stderr)
        return unusable
    if args.grace < 0:
        raise ConfigurationError(f"--grace must be 0 or more seconds, got {args.grace!r}")
    candidate = Candidate(args.key, identity=args.identity, ttl=args.ttl, lock_delay=args.lock_delay,
                          wait=not args.no_wait, **_connection(args))
    if args.metrics_port is not None:
        from .metrics import register, start_http_server

        register(candidate)
        start_http_server(args.metrics_port)
    runner = _Runner(candidate, command, args.grace, args.once)
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code: Optional[int] = None
    try:
        candidate.run(runner.job, block=False)
        while code is None:
            runner.wake.wait(0.2)
            runner.wake.clear()
            if runner.signum is not None:
                status = runner.shutdown()
                code = 128 + runner.signum if status is None else status
            elif args.once and runner.last is not None:
                status, deposed = runner.last
                code = EXIT_DEPOSED if deposed else status
            else:
                try:
                    candidate.wait_for_leadership(0)
                except LockHeld as exc:
                    print(f"consul-leader run: {exc}", file=sys.stderr)
                    code = EXIT_LOCK_HELD
    finally:
        runner.release.set()
        with runner.lock:
            runner.shutting_down = True
            child = runner.child
        if child is not None:  # leaving on an error: never leave the command running
            runner.terminate(child, signal.SIGTERM)
        candidate.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
