"""The ``consul-leader`` command.

``run KEY -- CMD`` runs a command only while this process leads (like
``consul lock``, but a crashed leader is replaced in seconds, not a minute);
``status KEY`` shows who leads; ``watch KEY`` prints each change of leader;
``demo`` runs :mod:`consul_leader.demo`. Connection options and environment
variables are those of the ``consul`` CLI. See ``consul-leader --help`` and
the "Command line" page of the docs for the exit codes.

The package: :mod:`.parser` (the arguments, in the consul CLI's spellings
too), :mod:`.codes` (the exit codes), :mod:`.commands` (``status``,
``watch``), :mod:`.run` (``run``), :mod:`.watchdog` (the process that
enforces the lease on ``run``'s command), :mod:`.backoff` (waits after a
crash loop) and :mod:`.consul_lock` (``run`` beside ``consul lock``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Dict, Optional, Sequence

from ..errors import ConfigurationError, ConsulLeaderError, PermissionDenied
from .codes import (
    EXIT_CANNOT_EXECUTE,
    EXIT_CODES,
    EXIT_CONSUL_LOCK,
    EXIT_DEPOSED,
    EXIT_LOCK_HELD,
    EXIT_NO_LEADER,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .commands import status, watch
from .parser import build_parser, duration, split_command
from .run import DEFAULT_GRACE, SAFETY_SLACK, run_command, run_timing

__all__ = ["DEFAULT_GRACE", "EXIT_CANNOT_EXECUTE", "EXIT_CODES", "EXIT_CONSUL_LOCK", "EXIT_DEPOSED",
           "EXIT_LOCK_HELD", "EXIT_NOT_FOUND", "EXIT_NO_LEADER", "EXIT_OK", "EXIT_PERMISSION", "EXIT_SOFTWARE",
           "EXIT_UNAVAILABLE", "EXIT_USAGE", "SAFETY_SLACK", "duration", "main", "run_timing"]

_HANDLERS: Dict[str, Callable[..., int]] = {"run": run_command, "status": status, "watch": watch}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``consul-leader`` command.

    :param argv: the arguments, without the program name; default ``sys.argv[1:]``.
    :returns: the exit code (see ``consul-leader --help``).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        from ..demo import main as demo_main

        return demo_main(args_list[1:])
    parsers = build_parser()
    name = args_list[0] if args_list else ""
    sub = parsers.commands.get(name)
    if sub is None:  # --help, --version, no or an unknown command: argparse answers and exits
        parsers.top.parse_args(args_list)
        return EXIT_USAGE  # pragma: no cover - parse_args exited
    # Parsed by the sub-command's own parser, so that an error shows its usage.
    try:
        own, command = split_command(parsers, args_list[1:])
    except argparse.ArgumentTypeError as exc:
        sub.error(str(exc))
    args = sub.parse_args(own)
    if command and name != "run":
        sub.error(f"{' '.join(command)!r} after KEY: only run takes a command; remove it")
    if name == "run" and not command:
        sub.error("give the command after KEY, e.g. run KEY -- my-job --flag (with -- before it when its "
                  "first word starts with -)")
    level = "debug" if args.verbose else args.log_level or ("info" if name == "run" else "warning")
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(_HANDLERS[name](args, command))
    except ConsulLeaderError as exc:
        print(f"consul-leader {name}: {exc}", file=sys.stderr)
        if isinstance(exc, ConfigurationError):
            return EXIT_USAGE
        return EXIT_PERMISSION if isinstance(exc, PermissionDenied) else EXIT_UNAVAILABLE
