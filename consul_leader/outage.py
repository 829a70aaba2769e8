"""One log line per outage, not one per retry.

An agent that is down, or a token a policy refuses, fails every request
until someone fixes it; a line for each retry buries the first one, which
says what went wrong, under hundreds that say nothing new. :class:`Outage`
logs the first failure, then at most one reminder per interval (how many
attempts failed since, and the last error), then the recovery. Every
attempt still goes to DEBUG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Outage"]


class Outage:
    """The log of one kind of request that can keep failing.

    Thread-safe: the heartbeat and the election thread may report into the
    same one.

    :param logger: where to log.
    :param what: what fails, as the lines name it (``"election for 'k'"``).
    :param every: the least time between two reminders, in seconds.
    :param clock: a monotonic clock (injectable for tests).
    """

    def __init__(self, logger: logging.Logger, what: str, *, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.what = what
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._said_at = 0.0
        self._failures = 0
        self._kind: type[BaseException] | None = None

    @property
    def failing(self) -> bool:
        """True from a failure until the next success."""
        return self._since is not None

    def failed(self, error: BaseException, *, level: int = logging.WARNING,
               extra: Mapping[str, Any] | None = None) -> None:
        """Tell of a failed attempt: logged at *level* if it starts an
        outage or is another kind of error than the last, as a reminder if
        *every* seconds passed since the last line, else at DEBUG only."""
        now = self._clock()
        with self._lock:
            self._failures += 1
            new = self._since is None or type(error) is not self._kind
            if self._since is None:
                self._since = now
            self._kind = type(error)
            due = now - self._said_at >= self.every
            if new or due:
                self._said_at = now
            failures, since = self._failures, self._since
        if new:
            self._log.log(level, "%s: %s; retrying (a reminder at most every %gs until it recovers)",
                          self.what, error, self.every, extra=extra)
        elif due:
            self._log.log(level, "%s: still failing, %d attempts in %.0fs; the last: %s", self.what, failures,
                          now - since, error, extra=extra)
        else:
            self._log.debug("%s: %s (attempt %d)", self.what, error, failures)

    def ok(self) -> None:
        """Tell of a success: ends an outage, with a line that says so."""
        if self._since is None:  # the usual case, without taking the lock
            return
        now = self._clock()
        with self._lock:
            if self._since is None:
                return
            failures, since = self._failures, self._since
            self._since, self._kind, self._failures = None, None, 0
        self._log.info("%s: working again after %d failed attempts in %.0fs", self.what, failures, now - since)
