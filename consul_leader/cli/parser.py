"""The ``consul-leader`` command line: its parser and durations."""

from __future__ import annotations

import argparse
import math
import re
from typing import Optional

from .codes import EXIT_CODES, EXIT_LOCK_HELD

__all__ = ["build_parser", "duration"]

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


def build_parser() -> argparse.ArgumentParser:
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

    def command(name: str, help: str, usage: Optional[str] = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[connection], help=help, description=help, usage=usage,
                                  allow_abbrev=False, epilog=EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("key", metavar="KEY", help="the Consul KV key that is the lock, e.g. service/x/leader")
        return sub

    run = command("run", "run CMD only while this process leads KEY; stop it when leadership is lost",
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

    status = command("status", "show who leads KEY, since when, and the fencing token")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    watch = command("watch", "print a line each time the leader of KEY changes, until SIGINT/SIGTERM")
    watch.add_argument("--json", action="store_true", help="print one JSON object per line")
    commands.add_parser("demo", help="run the demo: candidates on a throwaway Consul agent (demo --help)",
                        add_help=False)
    return parser

