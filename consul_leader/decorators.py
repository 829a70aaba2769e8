"""``@leader_only``, ``@on_elected``, ``@on_deposed`` and ``is_leader()``.

Used bare they act on the process's default candidate (see
:mod:`consul_leader.process`): the one given to :func:`set_default`, else
the earliest started in this process that has not been stopped. Each also
exists as a method of :class:`~consul_leader.Candidate`
(``@candidate.leader_only``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from . import signals
from .errors import ConfigurationTypeError, NotLeader
from .process import Leadership, get_default, is_leader, set_default, warn_no_default
from .validation import check_bool

__all__ = ["get_default", "is_leader", "leader_only", "on_deposed", "on_elected", "set_default"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class LeaderOnly(Protocol):
    """What ``leader_only(raise_not_leader=...)`` returns: a decorator that
    keeps the signature and adds None to the return type (a coroutine
    function stays one)."""

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R | None]: ...


@overload
def leader_only(func: Callable[P, Coroutine[Any, Any, R]], *, raise_not_leader: bool = ...,
                candidate: Leadership | None = ...) -> Callable[P, Coroutine[Any, Any, R | None]]: ...


@overload
def leader_only(func: Callable[P, R], *, raise_not_leader: bool = ...,
                candidate: Leadership | None = ...) -> Callable[P, R | None]: ...


@overload
def leader_only(func: None = ..., *, raise_not_leader: bool = ...,
                candidate: Leadership | None = ...) -> LeaderOnly: ...


def leader_only(func: Callable[..., Any] | None = None, *, raise_not_leader: bool = False,
                candidate: Leadership | None = None) -> Any:
    """Decorator: call the function only while leading; otherwise return
    None, or raise :class:`~consul_leader.NotLeader` with
    ``raise_not_leader=True``. Works bare (``@leader_only``) or with
    arguments (``@leader_only(raise_not_leader=True)``), on plain functions
    and on ``async def`` functions (the result is a coroutine function too,
    to be awaited; leadership is checked when it starts).

    :param func: the function (when used bare).
    :param raise_not_leader: raise instead of returning None.
    :param candidate: the :class:`~consul_leader.Candidate` to ask; default:
        the process's default candidate at call time."""
    check_bool("raise_not_leader", raise_not_leader)
    if candidate is not None and not isinstance(candidate, Leadership):
        raise ConfigurationTypeError(f"leader_only(candidate=...) takes a Candidate or None, "
                                     f"got {type(candidate).__name__}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise ConfigurationTypeError(f"@leader_only decorates a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):
            return wrap_async(fn, raise_not_leader=raise_not_leader, candidate=candidate)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = candidate if candidate is not None else get_default()
            if who is not None and who.is_leader():
                return fn(*args, **kwargs)
            _refuse(fn, who, raise_not_leader)
            return None

        return wrapper

    if func is None:
        return decorate
    return decorate(func)


def wrap_async(fn: Callable[P, Awaitable[R]], *, raise_not_leader: bool,
               candidate: Leadership | None) -> Callable[P, Coroutine[Any, Any, R | None]]:
    """The ``async def`` wrapper of :func:`leader_only` (and of
    :func:`consul_leader.aio.leader_only_async`, which also takes a plain
    function returning an awaitable): leadership is checked when the call
    starts."""

    @functools.wraps(fn)
    async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        who = candidate if candidate is not None else get_default()
        if who is not None and who.is_leader():
            return await fn(*args, **kwargs)
        _refuse(fn, who, raise_not_leader)
        return None

    return async_wrapper


def _refuse(fn: Callable[..., Any], who: Leadership | None, raise_not_leader: bool) -> None:
    if who is None:
        warn_no_default(f"@leader_only {getattr(fn, '__qualname__', fn)}()")
    if raise_not_leader:
        raise NotLeader(f"{getattr(fn, '__qualname__', fn)}() runs only on the leader, and "
                        f"{'no candidate is running' if who is None else repr(who) + ' does not lead'}")


def on_elected(func: F) -> F:
    """Decorator: call ``func(candidate, fencing_token=...)`` each time the
    default candidate is elected; returns *func* unchanged, connected to
    :data:`~consul_leader.elected` (``elected.disconnect(func)`` undoes it).

    :param func: the receiver; accept ``**extra`` for arguments added later.
        It runs on the candidate's signal thread."""
    return signals.connect_for_default(signals.elected, func)


def on_deposed(func: F) -> F:
    """Decorator: call ``func(candidate, reason=...)`` each time the default
    candidate stops leading; returns *func* unchanged, connected to
    :data:`~consul_leader.deposed` (``deposed.disconnect(func)`` undoes it).

    :param func: the receiver; accept ``**extra`` for arguments added later.
        It runs on the candidate's signal thread."""
    return signals.connect_for_default(signals.deposed, func)
