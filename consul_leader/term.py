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
from typing import Any

from .events import Reason
from .job import JobRunner
from .lockdelay import LockAttempt
from .session import Session

__all__ = ["Stage", "Term", "log_elected", "log_ended"]

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
