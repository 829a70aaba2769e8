"""Cutting short the request a thread is blocked in.

A blocking query may hold a connection for minutes; ``stop()`` and the
watch loops must not wait for it. Every connection the client opens is
recorded by the thread that opened it, so another thread can shut its
socket down: :func:`interrupt` for a thread about to end, :func:`wake` for
one that should look again at something that changed.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from typing import Any

import requests
import urllib3
import urllib3.connection

# Connections by the thread that opened them, so that stop() can cut short a
# blocking query another thread is waiting in (Consul may hold it for minutes).
_open_connections: weakref.WeakKeyDictionary[threading.Thread, weakref.WeakSet[Any]] = \
    weakref.WeakKeyDictionary()
_open_connections_lock = threading.Lock()


_interrupted: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
# Threads that wake() asked to give up the request they are (about to be) in,
# once: a connection they open before clear_wake() fails at once.
_woken: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A fork copies the lock in whatever state another thread left it (it
    # may be held for good), and the threads it names do not exist here.
    global _open_connections_lock
    _open_connections_lock = threading.Lock()
    _open_connections.clear()
    _interrupted.clear()
    _woken.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _track(conn: Any) -> None:
    thread = threading.current_thread()
    with _open_connections_lock:
        _open_connections.setdefault(thread, weakref.WeakSet()).add(conn)
        if thread in _interrupted:
            # interrupt() already swept this thread's sockets: refuse to open
            # one it could not see.
            conn.sock.close()
            raise OSError("consul-leader: request interrupted because the candidate stops")
        if thread in _woken:
            # wake() shut down the pooled socket before this request took it;
            # urllib3 then reconnects, and the wake must not be lost.
            _woken.discard(thread)
            conn.sock.close()
            raise OSError("consul-leader: request woken")


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)


class _TrackedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def interrupt(thread: threading.Thread) -> None:
    """Make the request *thread* is blocked in, and every later one, fail at
    once (as :class:`ConsulUnavailable`), by shutting its sockets down. For
    a thread that is about to end."""
    _cut(thread, _interrupted)


def wake(thread: threading.Thread) -> None:
    """Make the request *thread* is blocked in (or its next one, until it
    calls :func:`clear_wake`) fail at once, as :class:`ConsulUnavailable`.
    Unlike :func:`interrupt`, later requests work: this cuts a blocking query
    short so that the thread looks at something that changed meanwhile."""
    _cut(thread, _woken)


def _cut(thread: threading.Thread, marks: weakref.WeakSet[threading.Thread]) -> None:
    """Mark *thread* in *marks* (seen by _track when it connects) and shut
    down the sockets it has open, failing the request it is blocked in."""
    with _open_connections_lock:
        marks.add(thread)
        conns = list(_open_connections.get(thread, ()))
    for conn in conns:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def clear_wake() -> None:
    """Forget a :func:`wake` of the calling thread (call it before looking
    at what a wake would announce, then make the request)."""
    with _open_connections_lock:
        _woken.discard(threading.current_thread())


def track(session: requests.Session) -> None:
    """Make every connection *session* opens one that :func:`interrupt` and
    :func:`wake` can cut."""
    for adapter in session.adapters.values():
        adapter.poolmanager.pool_classes_by_scheme = {  # type: ignore[attr-defined]
            "http": _TrackedHTTPConnectionPool, "https": _TrackedHTTPSConnectionPool}
