"""Jobs that record when they worked, and the overlaps between them."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Tuple

#: How long a job takes to return once told to stop: well within the
#: margin a lease leaves (``lock_delay - lease``).
JOB_WINDS_DOWN = 0.2


class Jobs:
    """Every job's working interval, on one clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intervals: List[Tuple[str, float, float]] = []
        self.running: List[str] = []
        #: When the first job of each name started.
        self.started: Dict[str, float] = {}

    def job(self, name: str, wind_down: float = JOB_WINDS_DOWN) -> Any:
        """A job for ``run()`` named *name*: it works until told to stop,
        then winds down for *wind_down* seconds."""
        def job(stop_event: threading.Event) -> None:
            start = time.monotonic()
            with self.lock:
                self.running.append(name)
                self.started.setdefault(name, start)
            stop_event.wait()
            time.sleep(wind_down)
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

    def ended(self, name: str) -> float | None:
        """When the first job named *name* returned (None: not yet)."""
        with self.lock:
            return next((end for job, _, end in self.intervals if job == name), None)

    def worst(self, first: str, second: str) -> float:
        """The longest time a job named *first* and one named *second*
        worked together (0.0: never)."""
        return max((d for a, b, d in self.overlaps() if {a, b} == {first, second}), default=0.0)
