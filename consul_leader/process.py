"""The process around the candidates: which ones live, which one is the
default, and what happens to them at ``fork()``, at exit and on SIGTERM.

Both :mod:`consul_leader.candidate` and :mod:`consul_leader.decorators`
import this module and neither imports the other.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationTypeError
from .validation import check_signals

__all__ = ["Leadership", "get_default", "is_leader", "set_default", "stop_on_signals"]

log = logging.getLogger("consul_leader")


@runtime_checkable
class Leadership(Protocol):
    """What the process hooks and the decorators need of a candidate."""

    @property
    def running(self) -> bool: ...

    def is_leader(self) -> bool: ...

    def stop(self) -> None: ...


# Each live candidate, with what it does in a forked child (held weakly:
# registering keeps nothing alive).
_live: weakref.WeakKeyDictionary[Leadership, weakref.WeakMethod[Callable[[], None]]] = weakref.WeakKeyDictionary()
_default: Leadership | None = None
_explicit = False  # set by set_default(), not by start()
_started: list[weakref.ReferenceType[Leadership]] = []
_default_lock = threading.Lock()
# Whether any candidate was ever started or set as the default here, and
# whether the warning about asking before that was given (once a process).
_any_default = False
_warned = False


def register(candidate: Leadership, after_fork_in_child: Callable[[], None]) -> None:
    """Track *candidate* for the fork and exit hooks (called when it is made).

    :param after_fork_in_child: a method of *candidate*, called in a forked
        child (where only the forking thread lives on) to forget, without a
        request, the parent's threads, locks, session and terms."""
    _live[candidate] = weakref.WeakMethod(after_fork_in_child)


def set_default(candidate: Leadership | None) -> None:
    """Make *candidate* the one that bare decorators and :func:`is_leader`
    use (None to go back to the automatic choice: the earliest started
    candidate that has not been stopped). A candidate chosen here stays the
    default even once stopped, until another is set.

    :param candidate: the new default :class:`~consul_leader.Candidate`, or None.
    :raises ConfigurationTypeError: *candidate* is not a Candidate."""
    if candidate is not None and not isinstance(candidate, Leadership):
        raise ConfigurationTypeError(f"set_default() takes a Candidate or None, got {type(candidate).__name__}")
    global _default, _explicit, _any_default
    with _default_lock:
        _default = candidate
        _explicit = candidate is not None
        _any_default = _any_default or candidate is not None


def get_default() -> Leadership | None:
    """The process's default candidate, or None."""
    return _default


def offer_default(candidate: Leadership) -> None:
    """Make *candidate* the default if there is none yet (called by start())."""
    global _default, _any_default
    with _default_lock:
        _any_default = True
        _started.append(weakref.ref(candidate))
        if _default is None:
            _default = candidate


def withdraw_default(candidate: Leadership) -> None:
    """A candidate stopped (called by stop()): unless it was chosen with
    set_default(), the default passes to the earliest started one still running."""
    global _default
    with _default_lock:
        _started[:] = [ref for ref in _started if ref() not in (None, candidate)]
        if _default is candidate and not _explicit:
            running = [c for c in (ref() for ref in _started) if c is not None and c.running]
            _default = running[0] if running else None


def is_leader() -> bool:
    """True if the default candidate leads; False when there is none (and
    the first time no candidate was ever started, a warning says so)."""
    candidate = _default
    if candidate is None:
        warn_no_default("consul_leader.is_leader()")
        return False
    return candidate.is_leader()


def warn_no_default(what: str) -> None:
    """*what* asked the default candidate, and there is none: if no
    candidate was ever started in this process, say so, once (a silent
    False would look like a follower's answer)."""
    global _warned
    if _any_default or _warned:
        return
    _warned = True
    log.warning("%s asked before any candidate was started in this process, so it answers as a follower (False, "
                "or the function is not called); start a Candidate first (or choose one with "
                "consul_leader.set_default()). Said once.", what)


def _after_fork() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # it may have been held by a thread that is gone
    for forget in list(_live.values()):
        method = forget()
        if method is not None:
            method()


# Set by a second signal while the first one's stop_all() still waits (for
# a job that does not return): the operator insists, the process exits
# without waiting, and Consul frees the locks after the check's TTL.
_insisted = False
_stopping_all = False


def stop_all() -> None:
    """Stop every running candidate of this process (at exit, on a signal)."""
    global _stopping_all
    if _insisted:
        return
    _stopping_all = True
    try:
        for candidate in list(_live):
            try:
                candidate.stop()
            except Exception:
                log.exception("stopping %r failed", candidate)
    finally:
        _stopping_all = False


os.register_at_fork(after_in_child=_after_fork)
# The candidates' threads are daemons so that a program that returns from
# main can exit; this releases every lock before it does.
atexit.register(stop_all)


def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Install handlers that stop every running candidate (releasing its lock
    at once, so a deploy hands over in milliseconds) and then do what the
    previous handler did (by default: exit with ``128 + signum``).

    Call it from the main thread. Opt-in, because signal handlers belong to
    the application. Stopping waits for each candidate's job to return (see
    :meth:`Candidate.stop() <consul_leader.Candidate.stop>`); a second signal
    while that wait goes on (a second Ctrl-C) exits at once, leaving the
    locks for Consul to free after the check's TTL and the lock-delay.

    :param signums: the signal numbers to handle.
    :raises ConfigurationError: a number that is no signal, or SIGKILL/SIGSTOP."""
    for signum in check_signals(signums):
        previous = signal.getsignal(signum)

        def handler(num: int, frame: FrameType | None, previous: Any = previous) -> None:
            global _insisted
            if _stopping_all:
                # A second signal while the first still waits for a job that
                # does not return: exit now rather than never, and with the
                # process, so that the job dies too (the lock must not be
                # handed on while it runs).
                _insisted = True
                log.warning("signal %d again while stopping: exiting at once; Consul frees the locks after "
                            "the check's TTL and the lock-delay", num)
                logging.shutdown()
                os._exit(128 + num)
            else:
                stop_all()
            if callable(previous):
                previous(num, frame)
            elif previous == signal.SIG_IGN:
                return
            else:
                raise SystemExit(128 + num)

        signal.signal(signum, handler)
