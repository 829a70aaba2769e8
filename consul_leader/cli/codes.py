"""The exit codes of ``consul-leader``: one table for every sub-command, and
for ``manage.py leader_status`` (:mod:`consul_leader.contrib.django`).

Each code means one thing whichever command exits with it. ``1`` is left
to Python itself (an uncaught exception: a bug), ``2`` to bad usage (as
argparse and ``consul lock``), and the rest follow ``sysexits.h`` where it
has a meaning that fits.
"""

from __future__ import annotations

import textwrap
from typing import Tuple

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_CODES", "EXIT_CONSUL_LOCK", "EXIT_DEPOSED", "EXIT_LOCK_HELD",
           "EXIT_NOT_FOUND", "EXIT_NO_LEADER", "EXIT_OK", "EXIT_PERMISSION", "EXIT_SOFTWARE", "EXIT_UNAVAILABLE",
           "EXIT_USAGE", "TABLE"]

EXIT_OK = 0
#: Bad usage or configuration (argparse's own code); also ``run
#: -child-exit-code`` when the command failed, as ``consul lock`` exits.
EXIT_USAGE = 2
#: ``status``, ``leader_status``: nobody holds the lock (as an LSB init
#: script's ``status`` says "not running").
EXIT_NO_LEADER = 3
#: Consul could not be reached or answered with an error (EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69
#: ``run``: the watchdog process that enforces the lease on the command died (EX_SOFTWARE).
EXIT_SOFTWARE = 70
#: ``run --no-wait``: the lock is held by another process; ``run --timeout``:
#: not elected in time (EX_TEMPFAIL).
EXIT_LOCK_HELD = 75
#: ``run --once``: leadership was lost, so the command was stopped.
EXIT_DEPOSED = 76
#: The ACL token was refused (EX_NOPERM).
EXIT_PERMISSION = 77
#: ``run``: the key is ``consul lock``'s, which ``run`` cannot share (EX_CONFIG).
EXIT_CONSUL_LOCK = 78
#: The command exists but cannot be executed / cannot be found (as in a shell).
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: ``(code, commands, meaning)`` for every exit: ``--help`` prints it, and
#: docs/cli.rst has the same rows.
TABLE: Tuple[Tuple[str, str, str], ...] = (
    (str(EXIT_OK), "all", "success: status found a leader; watch ended by SIGINT/SIGTERM; run --once: the "
                          "command exited with 0"),
    ("1", "all", "an unexpected error (Python's own exit code, with a traceback): please report it"),
    (str(EXIT_USAGE), "all", "usage or configuration error; run -child-exit-code: the command failed (as consul "
                             "lock)"),
    (str(EXIT_NO_LEADER), "status", "nobody leads the key (also manage.py leader_status)"),
    (str(EXIT_UNAVAILABLE), "all", "Consul could not be reached, or answered with an error"),
    (str(EXIT_SOFTWARE), "run", "the watchdog process died (the command was killed with it)"),
    (str(EXIT_LOCK_HELD), "run", "--no-wait: another process holds the lock; --timeout: not elected in time"),
    (str(EXIT_DEPOSED), "run", "--once: leadership was lost and the command stopped"),
    (str(EXIT_PERMISSION), "all", "the ACL token was refused"),
    (str(EXIT_CONSUL_LOCK), "run", "the key is consul lock's (KEY/.lock holds its lock): see Moving from consul "
                                   "lock in the docs"),
    (f"{EXIT_CANNOT_EXECUTE}/{EXIT_NOT_FOUND}", "run", "the command cannot be executed / is not found"),
    ("other", "run", "the command's own status when run exits with it (--once, or a forwarded SIGINT/SIGTERM); "
                     "128+N when it died of signal N, or when run itself ended by signal N with no command "
                     "running"),
)

EXIT_CODES = "exit codes:\n" + "".join(
    textwrap.fill(meaning, 79, initial_indent=f"  {code:<8} {commands:<7} ", subsequent_indent=" " * 19) + "\n"
    for code, commands, meaning in TABLE)
