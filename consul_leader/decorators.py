"""``@leader_only``, ``@on_elected``, ``@on_deposed``, ``is_leader()`` and
the process's default candidate.

Used bare they act on the default candidate: the one given to
:func:`set_default`, else the earliest started in this process that has not
been stopped. Each also exists as a
method of :class:`~consul_leader.Candidate` (``@candidate.leader_only``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, List, Optional, TypeVar, overload

import blinker

from . import signals
from .errors import ConfigurationTypeError, NotLeader
from .validation import check_bool

if TYPE_CHECKING:
    from .candidate import Candidate

__all__ = ["get_default", "is_leader", "leader_only", "on_deposed", "on_elected", "set_default"]

F = TypeVar("F", bound=Callable[..., Any])

_default: "Optional[Candidate]" = None
_explicit = False  # set by set_default(), not by start()
_started: "List[weakref.ReferenceType[Candidate]]" = []
_default_lock = threading.Lock()


def set_default(candidate: "Optional[Candidate]") -> None:
    """Make *candidate* the one that bare decorators and :func:`is_leader`
    use (None to go back to the automatic choice: the earliest started
    candidate that has not been stopped). A candidate chosen here stays the
    default even once stopped, until another is set.

    :param candidate: the new default candidate, or None."""
    from .candidate import Candidate

    if candidate is not None and not isinstance(candidate, Candidate):
        raise ConfigurationTypeError(f"set_default() takes a Candidate or None, got {type(candidate).__name__}")
    global _default, _explicit
    with _default_lock:
        _default = candidate
        _explicit = candidate is not None


def get_default() -> "Optional[Candidate]":
    """The process's default candidate, or None."""
    return _default


def offer_default(candidate: "Candidate") -> None:
    """Make *candidate* the default if there is none yet (called by start())."""
    global _default
    with _default_lock:
        _started.append(weakref.ref(candidate))
        if _default is None:
            _default = candidate


def withdraw_default(candidate: "Candidate") -> None:
    """A candidate stopped (called by stop()): unless it was chosen with
    set_default(), the default passes to the earliest started one still running."""
    global _default
    with _default_lock:
        _started[:] = [ref for ref in _started if ref() not in (None, candidate)]
        if _default is candidate and not _explicit:
            running = [c for c in (ref() for ref in _started) if c is not None and c.running]
            _default = running[0] if running else None


def forget_default_after_fork() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # it may have been held by a thread that is gone


def is_leader() -> bool:
    """True if the default candidate leads; False when there is none."""
    candidate = _default
    return candidate is not None and candidate.is_leader()


@overload
def leader_only(func: F, *, raise_not_leader: bool = ..., candidate: "Optional[Candidate]" = ...) -> F: ...


@overload
def leader_only(func: None = ..., *, raise_not_leader: bool = ...,
                candidate: "Optional[Candidate]" = ...) -> Callable[[F], F]: ...


def leader_only(func: Optional[F] = None, *, raise_not_leader: bool = False,
                candidate: "Optional[Candidate]" = None) -> Any:
    """Decorator: call the function only while leading; otherwise return
    None, or raise :class:`~consul_leader.NotLeader` with
    ``raise_not_leader=True``. Works bare (``@leader_only``) or with
    arguments (``@leader_only(raise_not_leader=True)``).

    :param raise_not_leader: raise instead of returning None.
    :param candidate: the candidate to ask; default: the process's default
        candidate at call time."""
    check_bool("raise_not_leader", raise_not_leader)
    if candidate is not None:
        from .candidate import Candidate

        if not isinstance(candidate, Candidate):
            raise ConfigurationTypeError(f"leader_only(candidate=...) takes a Candidate or None, "
                                         f"got {type(candidate).__name__}")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise ConfigurationTypeError(f"@leader_only decorates a callable, got {type(fn).__name__}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = candidate if candidate is not None else _default
            if who is not None and who.is_leader():
                return fn(*args, **kwargs)
            if raise_not_leader:
                raise NotLeader(f"{fn.__qualname__}() runs only on the leader, and "
                                f"{'no candidate is running' if who is None else repr(who) + ' does not lead'}")
            return None

        return wrapper  # type: ignore[return-value]

    if func is None:
        return decorate
    return decorate(func)


def connect(signal: blinker.NamedSignal, func: F, which: "Callable[[], Optional[Candidate]]") -> F:
    """Connect *func* to *signal* for the candidate *which()* names at send
    time; return *func* unchanged."""
    if not callable(func):
        raise ConfigurationTypeError(f"@{signal.name} handlers must be callable, got {type(func).__name__}")

    def receiver(sender: Any, **kwargs: Any) -> None:
        if sender is which():
            func(sender, **kwargs)

    # Strong reference: the receiver closure would otherwise be collected.
    signal.connect(receiver, weak=False)
    return func


def on_elected(func: F) -> F:
    """Decorator: call ``func(candidate, fencing_token=...)`` on the default
    candidate's thread each time it is elected; returns *func* unchanged.

    :param func: the receiver; accept ``**extra`` for arguments added later."""
    return connect(signals.elected, func, get_default)


def on_deposed(func: F) -> F:
    """Decorator: call ``func(candidate, reason=...)`` on the default
    candidate's thread each time it stops leading; returns *func* unchanged.

    :param func: the receiver; accept ``**extra`` for arguments added later."""
    return connect(signals.deposed, func, get_default)
