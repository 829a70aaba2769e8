"""The ``consul-leader`` command line: its parser, durations, and the
spellings of ``consul lock`` (single dash, ``-flag=value``, Go's booleans,
a command given without ``--``)."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .. import __version__
from .codes import EXIT_CODES, EXIT_LOCK_HELD

__all__ = ["Parsers", "build_parser", "duration", "split_command"]

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


#: Flags that Go's ``flag`` package (``consul lock``) reads as booleans:
#: ``-flag``, ``-flag=true``, ``-flag=false``.
_BOOLEANS = ("once", "no-wait", "child-exit-code", "pass-stdin", "shell", "verbose", "stale")
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


class Parsers:
    """The top-level parser, one per sub-command, and which of their options
    take a value (to find where a command given without ``--`` begins)."""

    def __init__(self, top: argparse.ArgumentParser, commands: Dict[str, argparse.ArgumentParser],
                 with_value: Set[str]) -> None:
        self.top = top
        self.commands = commands
        self.with_value = with_value


def _normalize_booleans(args: Sequence[str]) -> List[str]:
    """``-shell=false`` as Go writes it becomes ``--no-shell``; ``-once=true``
    becomes ``-once``. argparse would refuse both."""
    out = []
    for arg in args:
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and eq and name in _BOOLEANS:
            if value in _TRUE:
                arg = f"--{name}"
            elif value in _FALSE:
                arg = f"--no-{name}"
            else:
                raise argparse.ArgumentTypeError(f"{arg}: -{name} is true or false (as -{name}=true), "
                                                 f"got {value!r}")
        out.append(arg)
    return out


def split_command(parsers: Parsers, args: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``run``'s arguments into its own and the command's: at ``--``,
    or, as ``consul lock`` does, at the first argument after KEY that is not
    an option (``run KEY my-job --flag``), whichever comes first: a ``--``
    in the command is the command's.

    :raises argparse.ArgumentTypeError: a boolean flag with a value that is not one."""
    args = list(args)
    positionals = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return _normalize_booleans(args[:i]), args[i + 1:]
        if arg.startswith("-") and arg != "-":
            if "=" not in arg and arg in parsers.with_value:
                i += 1  # the option's value
        else:
            positionals += 1
            if positionals == 2:  # "run" is not in args: KEY is the first, the command the second
                return _normalize_booleans(args[:i]), args[i:]
        i += 1
    return _normalize_booleans(args), []


def build_parser() -> Parsers:
    """The parsers of ``consul-leader`` and its sub-commands."""
    with_value: Set[str] = set()

    def option(target: Any, *names: str, **kwargs: Any) -> None:
        action = target.add_argument(*names, **kwargs)
        if action.nargs != 0:
            with_value.update(names)

    connection = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = connection.add_argument_group("connection (as the consul CLI; defaults from its environment variables)")
    option(group, "-http-addr", "--http-addr", "--address", dest="address", metavar="ADDR",
           help="the agent, host:port or https://host:port (CONSUL_HTTP_ADDR; default 127.0.0.1:8500)")
    option(group, "-token", "--token", help="ACL token (CONSUL_HTTP_TOKEN)")
    option(group, "-token-file", "--token-file", metavar="FILE",
           help="file holding the ACL token (CONSUL_HTTP_TOKEN_FILE)")
    option(group, "-datacenter", "--datacenter", metavar="DC", help="datacenter of the key and session")
    option(group, "-ca-file", "--ca-file", metavar="FILE", help="CA bundle for TLS (CONSUL_CACERT)")
    option(group, "-client-cert", "--client-cert", metavar="FILE",
           help="client certificate for TLS (CONSUL_CLIENT_CERT)")
    option(group, "-client-key", "--client-key", metavar="FILE", help="client certificate's key (CONSUL_CLIENT_KEY)")
    # The consul CLI's other HTTP options: refused with what to use instead
    # (see connection()), or without effect here.
    option(group, "-ca-path", "--ca-path", metavar="DIR", help="not supported: give one CA bundle with -ca-file")
    option(group, "-tls-server-name", "--tls-server-name", metavar="NAME",
           help="the name the agent's certificate must carry, and SNI (CONSUL_TLS_SERVER_NAME)")
    option(group, "-stale", "--stale", action="store_true",
           help="accepted for consul lock's sake; no effect (the lock is always read consistently)")
    option(group, "--no-stale", dest="stale", action="store_false", help=argparse.SUPPRESS)
    option(connection, "--log-level", "-log-level", choices=["debug", "info", "warning", "error"],
           help="log to stderr from this level (default: info; warning for status and watch)")
    option(connection, "-verbose", "--verbose", action="store_true", help="log from debug level (as consul lock)")
    option(connection, "--no-verbose", dest="verbose", action="store_false", help=argparse.SUPPRESS)

    top = argparse.ArgumentParser(
        prog="consul-leader", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Leader election on Consul: run a command only while leading, see who leads.",
        epilog=EXIT_CODES)
    top.add_argument("--version", "-version", action="version", version=f"consul-leader {__version__}")
    subparsers = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: Dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help: str, usage: Optional[str] = None) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, parents=[connection], help=help, description=help, usage=usage,
                                    allow_abbrev=False, epilog=EXIT_CODES,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("key", metavar="KEY", help="the Consul KV key that is the lock, e.g. service/x/leader")
        sub.set_defaults(command=name)
        commands[name] = sub
        return sub

    run = command("run", "run CMD only while this process leads KEY; stop it when leadership is lost",
                  usage="consul-leader run [options] KEY [--] CMD [ARG ...]")
    option(run, "--identity", "-identity", "-name", "--name",
           help="what this process writes into the key (default hostname:pid); -name as consul lock's")
    option(run, "--ttl", "-ttl", type=duration, default=3.0, metavar="DURATION",
           help="health check TTL: the one knob for failover speed (default 3s)")
    option(run, "--lock-delay", "-lock-delay", type=duration, metavar="DURATION",
           help="Consul lock-delay after a leader's session is invalidated (default: the lease plus "
                "--grace plus 0.5s, so the command is dead before another process can be elected; "
                "at least --ttl, at most 60s)")
    option(run, "--grace", "-grace", type=duration, metavar="DURATION",
           help="time between SIGTERM and SIGKILL when stopping the command (default 5s)")
    option(run, "--timeout", "-timeout", "-try", "--try", type=duration, metavar="DURATION",
           help=f"wait at most this long to be elected, then exit with {EXIT_LOCK_HELD} "
                "(as consul lock -timeout; 0, the default, waits for as long as it takes)")
    option(run, "--once", "-once", action="store_true",
           help="exit with the command, and when leadership is lost, as consul lock does (default: run "
                "for election again and start the command each term)")
    option(run, "--no-wait", "-no-wait", action="store_true",
           help=f"exit with {EXIT_LOCK_HELD} instead of waiting when another process holds the lock")
    option(run, "--shell", "-shell", action="store_true",
           help="run CMD through $SHELL -c (default /bin/sh), its words joined by spaces, as consul lock does "
                "by default (default: CMD is executed directly)")
    option(run, "--child-exit-code", "-child-exit-code", action="store_true",
           help="with --once, when the command exits by itself: exit 0 if it succeeded and 2 if it failed, as "
                "consul lock -child-exit-code (default: the command's own status)")
    option(run, "--pass-stdin", "-pass-stdin", action="store_true",
           help="accepted for consul lock's sake: the command always gets run's stdin")
    option(run, "--monitor-retry", "-monitor-retry", type=int, metavar="N",
           help="accepted for consul lock's sake; no effect: errors are ridden out for as long as the lease "
                "lasts (--ttl)")
    option(run, "-n", "--n", dest="limit", type=int, default=1, metavar="N",
           help="consul lock's holder limit: only 1 (one leader); semaphores are not supported")
    for flag in ("once", "no-wait", "shell", "child-exit-code", "pass-stdin"):
        option(run, f"--no-{flag}", dest=flag.replace("-", "_"), action="store_false", help=argparse.SUPPRESS)
    option(run, "--metrics-port", "-metrics-port", type=int, metavar="PORT",
           help="serve Prometheus metrics on this port (needs consul-leader[prometheus])")
    option(run, "--health-port", "-health-port", type=int, metavar="PORT",
           help="serve Kubernetes probes on this port: GET /readyz answers 200 on the leader and 503 "
                "elsewhere, GET /livez 200 while the election runs and its heartbeat is current")

    status = command("status", "show who leads KEY, since when, and the fencing token")
    option(status, "--json", "-json", action="store_true", help="print one JSON object")
    watch = command("watch", "print a line each time the leader of KEY changes, until SIGINT/SIGTERM")
    option(watch, "--json", "-json", action="store_true", help="print one JSON object per line")
    subparsers.add_parser("demo", help="run the demo: candidates on a throwaway Consul agent (demo --help)",
                          add_help=False)
    return Parsers(top, commands, with_value)
