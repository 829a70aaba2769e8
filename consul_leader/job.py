"""The work of one term: ``job(stop_event)`` in a worker thread, and a
watchdog that sets ``stop_event`` when the lease runs out.

The ordering rules (see "Safety of the work" in the docs) are the
candidate's: it starts a :class:`JobRunner` when a term begins, sets
:attr:`JobRunner.stop_event` when the term ends, and releases the lock only
after :meth:`JobRunner.join` returned. The watchdog does not depend on the
election thread being scheduled: the election thread may sit in a request
to a frozen agent while the lease runs out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LEASE_CLOCK_SLICE", "Job", "JobRunner"]

log = logging.getLogger("consul_leader")

#: ``job(stop_event)``: what :meth:`Candidate.run() <consul_leader.Candidate.run>` runs while leading.
Job = Callable[[threading.Event], Any]

#: Seconds between the warnings about a job that does not return.
_SLOW_JOB_WARNING = 5.0

#: The longest a thread that acts at a lease's end sleeps before it reads the
#: lease clock again. ``Event.wait`` sleeps on the monotonic clock, which
#: stops while the machine is suspended; the lease clock (the boot clock)
#: does not, so a wait sized by the lease would end late by the whole
#: suspend. Short slices bound that lateness.
LEASE_CLOCK_SLICE = 0.2


class JobRunner:
    """Runs one term's job, if there is one, and watches its lease: the
    watchdog runs for every term, job or not, so that the end of a lease is
    acted on at once even while the election thread waits on a frozen agent.

    :param job: called as ``job(stop_event)`` on a worker thread; None for a
        term without a job (one can be started later with :meth:`start`).
    :param lease_remaining: seconds left of the term's lease (<= 0: over).
    :param name: for thread names and logs, e.g. ``"host:1 service/x"``.
    :param on_return: called on the worker thread with True (returned) or
        False (raised) when the job ends before :attr:`stop_event` was set,
        i.e. while the term still runs.
    :param on_lease_end: called on the watchdog thread when it set
        :attr:`stop_event` because the lease ran out.
    :param on_exit: called on the worker thread as it ends, whether or not
        the job ran (its lease may have run out before it could start): an
        owner that does not :meth:`join` learns there that the job is over.
    """

    def __init__(self, job: Job | None, lease_remaining: Callable[[], float], name: str, *,
                 on_return: Callable[[bool], None], on_lease_end: Callable[[], None],
                 on_exit: Callable[[], None] | None = None) -> None:
        self.job = job
        self.name = name
        self.stop_event = threading.Event()
        self._lease_remaining = lease_remaining
        self._on_return = on_return
        self._on_lease_end = on_lease_end
        self._on_exit = on_exit
        self._ending = threading.Lock()
        self._lease_ended = False  # on_lease_end is called once, by the watchdog or the job's thread
        self._thread: threading.Thread | None = None

    def watch_lease(self) -> None:
        """Start the lease watchdog (once, when the term begins)."""
        threading.Thread(target=self._watchdog, name=f"consul-leader-lease {self.name}", daemon=True).start()

    def start(self, job: Job | None = None) -> None:
        """Start the job (*job*, or the one given at construction), once."""
        if job is not None and self.job is None:
            self.job = job
        if self.job is None or self._thread is not None or self.stop_event.is_set():
            return
        self._thread = threading.Thread(target=self._work, name=f"consul-leader-job {self.name}", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran the job."""
        return self._thread is not None

    def on_thread(self) -> bool:
        """True when called from the job itself."""
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        """Tell the job to return (set :attr:`stop_event`)."""
        self.stop_event.set()

    def join(self) -> None:
        """Wait until the job has returned, however long that takes, warning
        every few seconds: the next term's work must not start beside it.
        From the job itself, returns at once."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        waited = 0.0
        while True:
            thread.join(_SLOW_JOB_WARNING)
            if not thread.is_alive():
                return
            waited += _SLOW_JOB_WARNING
            log.warning("the job of %s still runs %gs after it was told to stop; the lock is not handed over "
                        "until it returns (a job must return soon after stop_event is set)", self.name, waited)

    def _work(self) -> None:
        try:
            self._run_job()
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _run_job(self) -> None:
        ok = True
        assert self.job is not None
        if self._lease_remaining() <= 0:
            # The process was paused between the term's start and this
            # thread's first step: the lease ran out meanwhile, and another
            # candidate may be working already. Do not start the job, and
            # end the term as the watchdog would: the lease is over.
            log.warning("the lease of %s ran out before its job could start; not starting it", self.name)
            self._lease_over()
            return
        try:
            self.job(self.stop_event)
        except BaseException:  # SystemExit too: it would only end this thread, silently
            ok = False
            log.exception("the job of %s raised", self.name)
        if self.stop_event.is_set():
            return
        if self._lease_remaining() <= 0:
            # The lease ran out before the job returned (the process was
            # paused; the watchdog thread has not looked yet): the term ends
            # because of that, not as a step-down of its own.
            self._lease_over()
            return
        self._on_return(ok)

    def _lease_over(self) -> None:
        with self._ending:
            if self._lease_ended:
                return
            self._lease_ended = True
        self.stop_event.set()
        self._on_lease_end()

    def _watchdog(self) -> None:
        while not self.stop_event.is_set():
            remaining = self._lease_remaining()
            if remaining <= 0:
                log.warning("the lease of %s ran out; telling the job to stop", self.name)
                self._lease_over()
                return
            self.stop_event.wait(min(remaining, LEASE_CLOCK_SLICE))
