"""APScheduler 3.x: run a scheduler's jobs only on the leader.

Every replica (every gunicorn worker, every host) builds the same scheduler
with the same jobs; :func:`run_on_leader` keeps it paused except while this
process leads::

    from apscheduler.schedulers.background import BackgroundScheduler
    from consul_leader import Candidate
    from consul_leader.contrib.apscheduler import run_on_leader

    scheduler = BackgroundScheduler()
    scheduler.add_job(send_reports, "cron", minute="*/5")
    run_on_leader(scheduler, Candidate("myservice/scheduler"))  # starts both

How:

* The scheduler starts **paused** (``start(paused=True)``), so a replica
  runs nothing until it is elected.
* On ``elected``, each job's next run time is moved past the present (a
  per-process job store would otherwise run again the slot the last leader
  just ran, or a burst of old ones), then the scheduler is **resumed**.
* On ``deposed``, the scheduler is **paused**, and the receiver waits until
  the jobs already running have returned. Receivers run on the candidate's
  signal thread and the lock is released only after the ``deposed``
  receivers returned, so on a graceful end (``stop()``, ``SIGTERM`` of a
  gunicorn worker, a term limit) the next leader resumes only after this
  scheduler stopped and its jobs finished.
* Between the lease's end and that receiver (a frozen process, an
  unreachable Consul), the scheduler submits nothing: its job processing
  checks :meth:`~consul_leader.Candidate.is_leader` (the lease) first.

Missed runs: slots that fell due while nobody led (the failover time after
a crash, about ``2 * ttl``; milliseconds after a graceful handover) are
**skipped**, not run late; the new leader runs the next slot. With
``catch_up=True`` the new leader leaves the next run times alone and
APScheduler's own misfire rules apply (``misfire_grace_time``, default 1 s,
and ``coalesce``, default True: a slot late by at most the grace time runs
once, older ones are reported as missed): use it only with a job store the
replicas share (e.g. ``SQLAlchemyJobStore``), where the last leader's
progress is stored; with per-process memory stores it would repeat the
slot the last leader ran.

Time: every replica computes the slots from its own clock. Give interval
jobs a fixed ``start_date`` (or use cron triggers) so that all replicas agree
on the slots; clocks that differ by more than a handover can repeat or skip
one slot at a handover.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, List, Optional

from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler  # type: ignore[import-untyped]

from ..candidate import Candidate
from ..runtime import check_threads_usable
from ..validation import check_bool, check_timeout

__all__ = ["LeaderScheduling", "run_on_leader"]

log = logging.getLogger("consul_leader")


class LeaderScheduling:
    """A scheduler that runs only while *candidate* leads; from
    :func:`run_on_leader`.

    :ivar scheduler: the APScheduler scheduler.
    :ivar candidate: the candidate deciding where it runs."""

    #: How often a deposed receiver that waits for running jobs says so.
    warn_every = 5.0

    def __init__(self, scheduler: BaseScheduler, candidate: Candidate, *, catch_up: bool = False,
                 drain_timeout: Optional[float] = None) -> None:
        self.scheduler = scheduler
        self.candidate = candidate
        self.catch_up = check_bool("catch_up", catch_up)
        self.drain_timeout = check_timeout("drain_timeout", drain_timeout)
        self._guard()
        candidate.on_elected(self._elected)
        candidate.on_deposed(self._deposed)

    def _guard(self) -> None:
        # The lease is the authority, not the receivers' timing: a scheduler
        # whose lease ran out submits nothing, even before `deposed` arrives.
        scheduler, candidate = self.scheduler, self.candidate
        process_jobs = scheduler._process_jobs

        def guarded() -> Optional[float]:
            if not candidate.is_leader():
                return None  # sleep until resume() wakes it
            result: Optional[float] = process_jobs()
            return result

        scheduler._process_jobs = guarded

    def start(self) -> "LeaderScheduling":
        """Start the scheduler paused (if it is not running yet) and the
        candidate; the scheduler resumes when the candidate is elected.

        :raises ConfigurationError: this process cannot run a candidate's
            threads (gevent's monkey-patching, uWSGI without threads)."""
        check_threads_usable()
        if self.scheduler.state == STATE_STOPPED:
            self.scheduler.start(paused=True)
        else:
            self.scheduler.pause()
        self.candidate.start()
        if self.candidate.is_leader():
            self._elected(self.candidate)  # elected before our receivers were connected
        return self

    def shutdown(self) -> None:
        """Stop the candidate (pausing the scheduler and waiting for its
        running jobs, then releasing the lock), then shut the scheduler down."""
        self.candidate.stop()
        if self.scheduler.state != STATE_STOPPED:
            self.scheduler.shutdown(wait=True)

    def _elected(self, candidate: Candidate, **extra: Any) -> None:
        if self.scheduler.state == STATE_STOPPED or not candidate.is_leader():
            return
        if not self.catch_up:
            self._skip_past_slots()
        self.scheduler.resume()
        log.info("%s runs the scheduler's jobs (fencing token %s)", candidate.identity, candidate.fencing_token)

    def _skip_past_slots(self) -> None:
        now = datetime.now(self.scheduler.timezone)
        for job in self.scheduler.get_jobs():
            if job.next_run_time is None or job.next_run_time > now:
                continue  # paused job, or a slot still to come
            upcoming = job.trigger.get_next_fire_time(None, now)
            if upcoming is not None and upcoming <= now:
                upcoming = job.trigger.get_next_fire_time(upcoming, now)
            if upcoming is None:
                continue  # a finished schedule: APScheduler removes it on its next look
            job.modify(next_run_time=upcoming)

    def _deposed(self, candidate: Candidate, reason: Any = None, **extra: Any) -> None:
        scheduler = self.scheduler
        if scheduler.state == STATE_STOPPED:
            return
        scheduler.pause()
        # A round of job processing that began before pause() may still be
        # submitting; it holds the job stores' lock until done.
        with scheduler._jobstores_lock:
            pass
        started = time.monotonic()
        warned = started
        while True:
            running = self.running_jobs()
            if not running:
                break
            now = time.monotonic()
            if self.drain_timeout is not None and now - started >= self.drain_timeout:
                log.error("%s stops leading with jobs still running after %gs: %s", candidate.identity,
                          self.drain_timeout, ", ".join(running))
                break
            if now - warned >= self.warn_every:
                warned = now
                log.warning("%s waits for running jobs before releasing the lock: %s", candidate.identity,
                            ", ".join(running))
            time.sleep(0.02)
        log.info("%s paused the scheduler (%s)", candidate.identity, reason)

    def running_jobs(self) -> List[str]:
        """The ids of the jobs running in this process's executors now."""
        running: List[str] = []
        for executor in self.scheduler._executors.values():
            with executor._lock:
                running.extend(job_id for job_id, count in executor._instances.items() if count > 0)
        return running


def run_on_leader(scheduler: BaseScheduler, candidate: Candidate, *, catch_up: bool = False,
                  drain_timeout: Optional[float] = None, start: bool = True) -> LeaderScheduling:
    """Run *scheduler*'s jobs only while *candidate* leads, and resume them
    on whichever replica leads next.

    :param scheduler: an APScheduler 3.x scheduler (``BackgroundScheduler``,
        ``AsyncIOScheduler``...), not started or running; jobs may be added
        before or after.
    :param candidate: the candidate; started here with *start*.
    :param catch_up: leave the jobs' next run times alone at an election,
        so that APScheduler's misfire rules decide about slots that fell due
        meanwhile; only with a job store shared by the replicas.
    :param drain_timeout: the longest a ``deposed`` receiver waits for
        running jobs before releasing the lock anyway (logged); None (the
        default) waits for as long as they run, so that two leaders' jobs
        never run at once.
    :param start: start the scheduler (paused) and the candidate now; False
        to call :meth:`LeaderScheduling.start` later, e.g. after a fork.
    """
    scheduling = LeaderScheduling(scheduler, candidate, catch_up=catch_up, drain_timeout=drain_timeout)
    return scheduling.start() if start else scheduling
