"""One term: from the lock taken and led to the lock released.

Both engines walk a term through the same stages, in this order and never
back: :attr:`Stage.LEADING` (``is_leader()`` may be True; whoever steps down
first, from any thread, sets :attr:`Term.reason` and turns the flag off),
:attr:`Stage.JOINING` (the job told to stop and waited for), then
:attr:`Stage.DELIVERING` (``deposed`` sent and its receivers waited for),
:attr:`Stage.RELEASING` and :attr:`Stage.DONE`. The safety of the work rests
on that order: the lock is released only once the job returned and the
``deposed`` receivers ran.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from . import signals
from .events import Broadcast, EventKind, LeadershipEvent, Reason
from .job import Job, JobRunner
from .lockdelay import LockAttempt
from .session import Session

__all__ = ["Stage", "Term", "announce_elected", "announce_ended", "log_elected", "log_ended", "term_runner"]

log = logging.getLogger("consul_leader")


class Stage(enum.Enum):
    """Where a term is in its life (see the module's docs for who moves it)."""

    LEADING = "leading"
    JOINING = "joining"
    DELIVERING = "delivering"
    RELEASING = "releasing"
    DONE = "done"

    def past(self, other: Stage) -> bool:
        """True if this stage comes after *other*."""
        order = list(Stage)
        return order.index(self) > order.index(other)


class Term:
    """One term of one key, from its acquisition on.

    :param session: the session that holds the lock.
    :param attempt: the acquisition that took it.
    :param started: when it was led, on the participant's clock.
    """

    __slots__ = ("session", "fencing_token", "lock_index", "create_index", "started", "reason", "runner", "stage")

    def __init__(self, session: Session, attempt: LockAttempt, started: float) -> None:
        assert attempt.modify_index is not None
        self.session = session
        #: The key's ModifyIndex at the acquisition.
        self.fencing_token = attempt.modify_index
        self.lock_index = attempt.lock_index or 0
        self.create_index = attempt.create_index or 0
        self.started = started
        #: Set once, by whoever ends the term first (resign, stop, the job,
        #: the lease watchdog, the watch of the lock).
        self.reason: Reason | None = None
        self.runner: JobRunner | None = None
        self.stage = Stage.LEADING


def announce_elected(dispatcher: signals.Dispatcher, events: Broadcast[LeadershipEvent], sender: Any, term: Term,
                     *, latest: bool) -> None:
    """Queue a new term's ``elected`` and ``leader_changed`` signals and publish its event.

    :param sender: the signals' sender (the Candidate, or the Candidacy of the key).
    :param latest: send ``leader_changed`` as the latest state only (see
        :meth:`Dispatcher.send_latest <consul_leader.signals.Dispatcher.send_latest>`)."""
    dispatcher.send(signals.elected, sender, fencing_token=term.fencing_token)
    send_leader = dispatcher.send_latest if latest else dispatcher.send
    send_leader(signals.leader_changed, sender, leader=sender.identity)
    events.publish(LeadershipEvent(EventKind.ELECTED, fencing_token=term.fencing_token))


def announce_ended(dispatcher: signals.Dispatcher, events: Broadcast[LeadershipEvent], sender: Any, term: Term,
                   **extra: Any) -> None:
    """*term*'s job returned: tell the log, queue ``deposed`` and publish its
    event (the term moves to :attr:`Stage.DELIVERING`). The caller waits for
    the receivers before the release."""
    assert term.reason is not None
    log_ended(sender.identity, sender.key, term.reason, **extra)
    term.stage = Stage.DELIVERING
    dispatcher.send(signals.deposed, sender, reason=term.reason)
    events.publish(LeadershipEvent(EventKind.DEPOSED, reason=term.reason))


def term_runner(job: Job | None, lease_remaining: Callable[[], float], sender: Any,
                step_down: Callable[[Reason], object], *, on_lease_end: Callable[[], None],
                on_exit: Callable[[], None] | None = None) -> JobRunner:
    """The :class:`JobRunner` of a term: a job that returns (or raises)
    while the term runs ends it, as a step-down of its own.

    :param sender: the participant (its identity and key name the threads).
    :param step_down: ends the term for a reason, from any thread."""

    def returned(ok: bool) -> None:
        if not ok:
            log.error("the job of %s raised while leading %r; resigning", sender.identity, sender.key)
        step_down(Reason.JOB_FINISHED if ok else Reason.JOB_FAILED)

    return JobRunner(job, lease_remaining, f"{sender.identity} {sender.key}", on_return=returned,
                     on_lease_end=on_lease_end, on_exit=on_exit)


def log_elected(identity: str, key: str, term: Term, **extra: Any) -> None:
    """Tell the log that *identity* leads *key* in *term*."""
    log.info("%s elected leader of %r (fencing token %d)", identity, key, term.fencing_token, **extra)


def log_ended(identity: str, key: str, reason: Reason, **extra: Any) -> None:
    """Tell the log that a term of *identity* on *key* ended for *reason*: a
    warning if it was deposed, else a step-down of its own."""
    if reason.deposed:
        log.warning("%s deposed as leader of %r: %s", identity, key, reason, **extra)
    else:
        log.info("%s stepped down as leader of %r: %s", identity, key, reason, **extra)
