"""How long ``consul-leader run`` waits after a command that keeps exiting
at start, before it lets the term end and runs for election again: a crash
loop must not take and release the lock every few seconds."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

__all__ = ["CrashBackoff"]

log = logging.getLogger("consul_leader")


class CrashBackoff:
    """Growing waits for a command that keeps exiting soon after its start.

    An exit within :attr:`quick` seconds of the start counts, whatever its
    status (a command that cannot start is one that exits at once); the
    second such exit in a row waits :attr:`first` seconds, each further one
    twice as long, up to :attr:`longest`. A run that lasted :attr:`quick`
    seconds or more starts the count again, and so does a quick exit
    :attr:`forget` seconds after the last one (two crashes hours apart are
    no loop). The log says so once when the waits begin and once when they
    end (every wait at debug level).

    :param what: the command, for the log.
    :param clock: seconds, for :attr:`forget` (injectable for tests).
    """

    #: An exit this soon (seconds) after the start is a failure at start.
    quick = 10.0
    #: The first wait, seconds.
    first = 1.0
    #: The longest wait, seconds.
    longest = 60.0
    #: A quick exit this long (seconds) after the last one starts the count again.
    forget = 600.0

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.in_a_row = 0
        self._said = False
        self._clock = clock
        self._last = -math.inf

    def after_exit(self, ran: float, code: Optional[int]) -> float:
        """The command ended after *ran* seconds with *code* (None: it could
        not be started): seconds to wait before the next run."""
        if ran >= self.quick:
            if self._said:
                log.info("consul-leader run: %s ran %.0fs; no more waits between runs", self.what, ran)
            self.in_a_row, self._said = 0, False
            return 0.0
        now = self._clock()
        if now - self._last >= self.forget:
            self.in_a_row = 0
        self._last = now
        self.in_a_row += 1
        if self.in_a_row < 2:
            return 0.0
        wait = min(self.longest, self.first * 2.0 ** (self.in_a_row - 2))
        status = "could not be started" if code is None else f"exited with {code} after {ran:.1f}s"
        if not self._said:
            self._said = True
            log.warning("consul-leader run: %s keeps exiting within %gs of its start (now: %s); keeping the lock "
                        "%gs before stepping down, so that it is not taken and released every few seconds, twice "
                        "as long each time up to %gs, until a run lasts %gs (said once; each wait at debug level)",
                        self.what, self.quick, status, wait, self.longest, self.quick)
        else:
            log.debug("consul-leader run: %s %s; waiting %gs", self.what, status, wait)
        return wait
