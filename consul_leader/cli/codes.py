"""The exit codes of ``consul-leader``: one table for every sub-command."""

from __future__ import annotations

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_CODES", "EXIT_DEPOSED", "EXIT_LOCK_HELD", "EXIT_NOT_FOUND",
           "EXIT_NO_LEADER", "EXIT_OK", "EXIT_PERMISSION", "EXIT_SOFTWARE", "EXIT_UNAVAILABLE", "EXIT_USAGE"]

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
