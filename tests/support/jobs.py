"""Jobs that record when they worked, and the overlaps between them."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Tuple

#: How long a job takes to return once told to stop: well within the
#: margin a lease leaves (``lock_delay - lease``).
JOB_WINDS_DOWN = 0.2


class Jobs:
    """Every job's working interval, on one clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intervals: List[Tuple[str, float, float]] = []
        self.running: List[str] = []

    def job(self, name: str) -> Any:
        """A job for ``run()`` named *name*: it works until told to stop,
        then winds down for :data:`JOB_WINDS_DOWN`."""
        def job(stop_event: threading.Event) -> None:
            start = time.monotonic()
            with self.lock:
                self.running.append(name)
            stop_event.wait()
            time.sleep(JOB_WINDS_DOWN)
            with self.lock:
                self.running.remove(name)
                self.intervals.append((name, start, time.monotonic()))
        return job

    def overlaps(self) -> List[Tuple[str, str, float]]:
        """Pairs of jobs of different names that worked at the same time,
        with how long (seconds, rounded to the millisecond)."""
        found = []
        for i, (a, a0, a1) in enumerate(self.intervals):
            for b, b0, b1 in self.intervals[i + 1:]:
                if a != b and a0 < b1 and b0 < a1:
                    found.append((a, b, round(min(a1, b1) - max(a0, b0), 3)))
        return found
