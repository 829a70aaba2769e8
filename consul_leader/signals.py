"""Blinker signals sent by candidates and followers.

They live in the library's own :class:`blinker.Namespace`. The sender is the
:class:`~consul_leader.Candidate` or :class:`~consul_leader.Follower`.
A candidate's receivers run, in order, on a thread of their own (its
:class:`Dispatcher`), never on the thread that keeps its lease: a slow or
raising receiver cannot cost leadership. A follower's run on its watching
thread. Receivers get keyword arguments::

    from consul_leader import elected

    @elected.connect
    def started(candidate, fencing_token, **extra):
        ...

A receiver that raises is logged and the others still run: a bug in a
receiver never stops an election.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import blinker

from .errors import ConfigurationTypeError
from .process import get_default

__all__ = ["Dispatcher", "connect_for", "connect_for_default", "deposed", "elected", "election_error",
           "leader_changed", "send"]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("consul_leader")

_namespace = blinker.Namespace()

#: Sent when the candidate wins the lock. ``fencing_token=`` (int) is the
#: key's ModifyIndex at the acquisition; it grows with every later term.
elected = _namespace.signal("elected", doc="The candidate became leader; kwargs: fencing_token.")

#: Sent when a candidate that was elected stops leading, after its job (if
#: any) has returned. ``reason=`` (str) says why: stepping down,
#: ``"resigned"``, ``"stopped"``, ``"term limit"``, ``"job finished"``,
#: ``"job failed"``; or deposed, ``"lock lost"`` (session gone, key deleted or
#: taken), ``"key overwritten"``, ``"lease expired"``.
deposed = _namespace.signal("deposed", doc="The candidate stopped leading; kwargs: reason.")

#: Sent when the observed leader changes; ``leader=`` is its identity or None.
leader_changed = _namespace.signal("leader_changed", doc="The leader changed; kwargs: leader.")

#: Sent when talking to Consul failed; ``error=`` is the exception. The
#: candidate retries by itself.
election_error = _namespace.signal("election_error", doc="Talking to Consul failed; kwargs: error.")


# Receivers connected by the bare decorators: called only when the sender
# is the default candidate at send time (by id: blinker's own key).
_for_default: dict[int, Callable[..., Any]] = {}


def _check_receiver(signal: blinker.NamedSignal, func: Any) -> None:
    if not callable(func):
        raise ConfigurationTypeError(f"@on_{signal.name} handlers must be callable, got {type(func).__name__}")


def connect_for_default(signal: blinker.NamedSignal, func: F) -> F:
    """Connect *func* to *signal* for whichever candidate is the process's
    default when the signal is sent. ``signal.disconnect(func)`` undoes it.

    :returns: *func*, unchanged."""
    _check_receiver(signal, func)
    _for_default[id(func)] = func
    signal.connect(func, weak=False)
    return func


def connect_for(signal: blinker.NamedSignal, func: F, sender: Any) -> F:
    """Connect *func* to *signal* sent by *sender* only, without keeping
    *sender* alive. ``signal.disconnect(func)`` undoes it.

    :returns: *func*, unchanged."""
    _check_receiver(signal, func)
    signal.connect(func, sender=sender, weak=False)
    return func


def send(signal: blinker.NamedSignal, sender: Any, **kwargs: Any) -> None:
    """Send *signal*, calling each receiver on its own so that one that
    raises is logged and the rest still run (blinker itself would stop at
    the first exception)."""
    _deliver(signal, sender, get_default(), kwargs)


def _deliver(signal: blinker.NamedSignal, sender: Any, default: Any, kwargs: dict[str, Any]) -> None:
    """Call *signal*'s receivers for *sender*; those of the bare decorators
    only if *sender* was the default candidate (when the signal was sent)."""
    for receiver in list(signal.receivers_for(sender)):
        if id(receiver) in _for_default and _for_default[id(receiver)] is receiver and sender is not default:
            continue
        try:
            receiver(sender, **kwargs)
        except BaseException:  # SystemExit too: it would end the signal thread, not the process
            log.exception("a receiver of the %r signal raised; the election goes on",
                          signal.name)


#: Seconds between the warnings about a receiver that does not return.
_SLOW_RECEIVER_WARNING = 5.0


def _nothing() -> None:
    pass


class _Task:
    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


class Dispatcher:
    """Runs a candidate's receivers, and anything else that must not run on
    the election or heartbeat threads, one after the other on a daemon
    thread of its own, in the order they were queued.

    Signals that report a state (``leader_changed``, ``election_error``) are
    sent with :meth:`send_latest`: while one waits in the queue, a newer one
    replaces its arguments instead of queueing behind it, so slow receivers
    cannot pile up work, and the end of a term (which waits for the queue)
    waits for a bounded number of receivers.

    :param name: the thread's name.

    .. versionadded:: 0.2
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: collections.deque[_Task | None] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._latest: dict[Any, _Task] = {}  # queued tasks that a newer one replaces
        self._busy = False  # a task is running
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def send(self, signal: blinker.NamedSignal, sender: Any, **kwargs: Any) -> None:
        """Queue *signal* for its receivers; returns at once. The bare
        decorators' receivers go by the default candidate of this moment.
        Nothing is queued when nobody listens (a handover then waits for
        no thread)."""
        if signal.has_receivers_for(sender):
            self.call(_deliver, signal, sender, get_default(), kwargs)

    def send_latest(self, signal: blinker.NamedSignal, sender: Any, **kwargs: Any) -> None:
        """Like :meth:`send`, but if this signal is still queued, undelivered,
        deliver these arguments in its place (the latest state only)."""
        if not signal.has_receivers_for(sender):
            return
        self._put(_Task(_deliver, (signal, sender, get_default(), kwargs), {}), latest=signal.name)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``; returns at once."""
        self._put(_Task(fn, args, kwargs))

    def _put(self, task: _Task | None, latest: Any = None) -> None:
        with self._lock:
            if task is not None and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        with self._ready:
            queued = self._latest.get(latest) if latest is not None else None
            if queued is not None and task is not None:
                if self._queue and self._queue[-1] is queued:
                    queued.args = task.args  # still the last: deliver the newer state in its place
                    return
                # Something was queued since (elected, deposed): keep the
                # order, drop the stale one, queue the newer behind.
                queued.fn, queued.args, queued.kwargs = _nothing, (), {}
            if latest is not None and task is not None:
                self._latest[latest] = task
            self._queue.append(task)
            self._ready.notify()

    def close(self) -> None:
        """Let the thread end once what is queued has run (a later
        :meth:`call` starts a new one)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            self._thread = None
        if alive:
            self._put(None)

    def on_thread(self) -> bool:
        """True when called from the dispatcher's own thread (a receiver)."""
        return threading.current_thread() is self._thread

    def flush(self, what: str = "receivers") -> None:
        """Wait until everything queued so far has run, warning every few
        seconds while a receiver keeps it waiting. From a receiver itself,
        returns at once (what it queued runs after it)."""
        if self.on_thread() or self._thread is None:
            return
        with self._ready:
            if not self._queue and not self._busy:
                return  # nothing to wait for: no thread switch
        done = threading.Event()
        self.call(done.set)
        waited = 0.0
        while not done.wait(_SLOW_RECEIVER_WARNING):
            waited += _SLOW_RECEIVER_WARNING
            log.warning("%s still run after %gs; waiting for them (thread %r)", what, waited, self.name)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                task = self._queue.popleft()
                self._busy = task is not None
                if task is not None:
                    for name, queued in list(self._latest.items()):
                        if queued is task:
                            del self._latest[name]  # from now on a newer one queues anew
            if task is None:
                return
            try:
                task.fn(*task.args, **task.kwargs)
            except BaseException:  # send() already isolates receivers; this is a bug of ours
                log.exception("unexpected error delivering %r", task.fn)
            finally:
                with self._ready:
                    self._busy = False
