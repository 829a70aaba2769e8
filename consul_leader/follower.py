"""Watching the leader key: who leads, and when that changes.

:class:`Follower` observes an election without running in it (the follower
of Docker's ``leadership`` package); the same :class:`KeyWatch` drives a
candidate's waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import tenacity

from . import aio, signals
from .client import ConsulClient
from .config import ConsulConfig
from .entry import KeyEntry
from .errors import ConsulLeaderError, ConsulUnavailable, NotRunning, PermissionDenied
from .events import Broadcast
from .interrupt import interrupt
from .lockdelay import since_of
from .roster import Contender, contenders_of
from .validation import check_key, check_number

log = logging.getLogger("consul_leader")

__all__ = ["Follower", "KeyWatch", "LeaderInfo", "PrefixChanges", "PrefixWatch"]


@dataclass(frozen=True)
class LeaderInfo:
    """What the leader key says.

    :ivar identity: the leader's identity, or None when nobody leads.
    :ivar session: the leader's Consul session ID.
    :ivar since: Unix time (seconds) at which it took the lock, if known.
    :ivar modify_index: the key's ModifyIndex; the leader's fencing token
        unless the key was rewritten during its term.
    """

    identity: str | None = None
    session: str | None = None
    since: float | None = None
    modify_index: int | None = None

    @classmethod
    def from_entry(cls, entry: KeyEntry | Mapping[str, Any] | None) -> LeaderInfo:
        """Read a KV entry, parsed or as returned by Consul (None: no key)."""
        if entry is not None and not isinstance(entry, KeyEntry):
            entry = KeyEntry.parse(entry)
        if entry is None or entry.session is None:
            return cls()
        since = since_of(entry.flags)
        return cls(identity=entry.value.decode("utf-8", "replace"), session=entry.session,
                   since=since / 1000 if since else None, modify_index=entry.modify_index)

    def same_leader(self, other: LeaderInfo) -> bool:
        """True if *other* names the same leader: the same identity holding
        the lock with the same session (a restarted process that writes the
        same identity is another leader)."""
        return (self.identity, self.session) == (other.identity, other.session)


class KeyWatch:
    """Blocking queries on one key, keeping the index between calls.

    :param client: the Consul client.
    :param key: the key to watch.
    """

    def __init__(self, client: ConsulClient, key: str) -> None:
        self.client = client
        self.key = key
        self.index = 0
        self.entry: KeyEntry | None = None

    def read(self, wait: float | None = None) -> KeyEntry | None:
        """Return the key's entry; with *wait*, block until it changes or
        *wait* seconds pass (never a sleep loop)."""
        index, raw = self.client.get_key(self.key, index=self.index if wait else None, wait=wait)
        self.index = _next_index(index, self.index)
        self.entry = entry = KeyEntry.parse_optional(raw)
        return entry


def _next_index(answered: int, last: int) -> int:
    # Consul's rules for blocking queries: an index that goes backwards
    # (a snapshot restore, a new cluster) restarts from 0; 0 is never waited on.
    return answered if answered > 0 and answered >= last else (0 if answered < last else 1)


@dataclass(frozen=True)
class PrefixChanges:
    """What one listing of a prefix changed since the last one.

    :ivar index: the listing's index.
    :ivar changed: the entries that are new or changed, by key.
    :ivar removed: the keys that are gone.
    :ivar reset: the index went backwards (a snapshot restore, a new
        cluster): *changed* holds every entry, and what was known before is void.
    """

    index: int
    changed: dict[str, KeyEntry]
    removed: frozenset[str]
    reset: bool


class PrefixWatch:
    """Blocking queries on every key under a prefix, keeping the index and
    each key's ModifyIndex between calls, so that only what changed is
    handed on: a change costs the same with 1 key or 1,000.

    :param client: the Consul client.
    :param prefix: the prefix.
    :param wait: the longest a blocking query waits, in seconds.
    """

    def __init__(self, client: ConsulClient, prefix: str, wait: float) -> None:
        self.client = client
        self.prefix = prefix
        self.wait = wait
        self.index = 0
        self._known: dict[str, int] = {}

    def changes(self) -> PrefixChanges:
        """List the prefix (the first time at once, then as soon as it
        changes past the last listing, or after :attr:`wait`)."""
        new, raw = self.client.get_prefix(self.prefix, index=self.index or None,
                                          wait=self.wait if self.index else None)
        reset = new < self.index
        self.index = _next_index(new, self.index)
        known = self._known
        if reset:
            known.clear()
        changed = {key: KeyEntry.parse(one) for key, one in raw.items() if known.get(key) != int(one["ModifyIndex"])}
        removed = frozenset(known.keys() - raw.keys())
        for key in removed:
            del known[key]
        for key, entry in changed.items():
            known[key] = entry.modify_index
        return PrefixChanges(new, changed, removed, reset)


class Follower:
    """Observes who leads *key*, without running for election.

    :param key: the leader key the candidates use.
    :param consul: an existing ``consul.Consul`` whose settings to use;
        otherwise *address*, *token*, *datacenter*, *verify* and *cert* as for
        :class:`~consul_leader.Candidate`, falling back to ``CONSUL_HTTP_*``.
    :param address: the agent, ``host:port`` or ``https://host:port``.
    :param token: ACL token (needs ``key_prefix`` read on *key*). Never logged.
    :param datacenter: the datacenter of the key.
    :param verify: TLS verification: a CA bundle path, True or False.
    :param cert: client certificate (path, or ``(cert, key)``).
    :param wait: the longest a blocking query waits, in seconds.
    :param timeout: seconds allowed for a request, on top of a blocking
        query's wait (as for :class:`~consul_leader.Candidate`).

    .. versionadded:: 0.1
    """

    def __init__(self, key: str, *, consul: Any = None, address: str | None = None,
                 token: str | None = None, datacenter: str | None = None,
                 verify: None | bool | str = None, cert: None | str | tuple[str, str] = None,
                 wait: float = 30.0, timeout: float = 5.0) -> None:
        self.key = check_key(key)
        self.client = ConsulClient(ConsulConfig.resolve(consul=consul, address=address, token=token,
                                                        datacenter=datacenter, verify=verify, cert=cert,
                                                        timeout=timeout))
        self._wait = check_number("wait", wait, 0.01, 600)
        self._info = LeaderInfo()
        self._seen = threading.Event()
        # Why the key has not been read yet: the last failure since the
        # last read that worked (None once one did). _settled is set by a
        # read, or by a failure that waiting would not cure (an ACL denial).
        self._failure: BaseException | None = None
        self._settled = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._changes: Broadcast[LeaderInfo] = Broadcast()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Follower {self.key!r} leader={self._info.identity!r}>"

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Follower:
        """Start watching in a background thread; idempotent."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"consul-leader-follower {self.key}",
                                                daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; :meth:`changes` iterators end."""
        self._stop.set()
        self._settled.set()  # a wait for the first read ends (NotRunning if there was none)
        self._changes.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            interrupt(self._thread)
            self._thread.join(self.client.config.timeout + 1)

    @property
    def running(self) -> bool:
        """True while the watching thread runs (between :meth:`start` and :meth:`stop`).

        .. versionadded:: 0.2"""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def leader(self) -> str | None:
        """The leader's identity as last observed, or None."""
        return self._info.identity

    def info(self) -> LeaderInfo:
        """Everything the key says about the leader, as last observed."""
        return self._info

    def contenders(self) -> list[Contender]:
        """Every candidate of the key, in the order they joined (see
        :meth:`Candidate.contenders <consul_leader.Candidate.contenders>`).
        Reads Consul (two requests); needs no :meth:`start`.

        :raises ConsulLeaderError: Consul could not be read.

        .. versionadded:: 0.2"""
        return contenders_of(self.client, self.key)

    def wait_for_leader(self, timeout: float | None = None) -> str | None:
        """Block until the key has been read once and return the leader's
        identity then: None means Consul answered that nobody leads (it does
        not wait for a leader to appear; :meth:`changes` does). Once read,
        it answers at once with the leader as last observed.

        :param timeout: seconds to wait for the first read; None for no limit.
        :raises NotRunning: :meth:`start` was not called, or :meth:`stop`
            was before the first read.
        :raises ConsulUnavailable: Consul did not answer during the whole
            *timeout* (unreachable, failing, or slower than *timeout*); the
            last error, if any, is its ``__cause__``. The follower keeps
            trying in the background.
        :raises PermissionDenied: the ACL token may not read the key; raised
            at once, not after *timeout*.

        .. versionchanged:: 0.2
           Raises :class:`~consul_leader.ConsulUnavailable` when the key
           could not be read within *timeout*, where it returned None as
           for "nobody leads"."""
        if self._thread is None:
            raise NotRunning("Follower.wait_for_leader() needs start() first")
        self._settled.wait(timeout)
        with self._lock:
            seen, info, failure = self._seen.is_set(), self._info, self._failure
        if seen:
            return info.identity
        if isinstance(failure, PermissionDenied):
            raise failure
        if self._stop.is_set():
            raise NotRunning(f"the follower of {self.key!r} was stopped before it could read the key")
        where = f"Consul at {self.client.config.address}"
        if failure is None:
            raise ConsulUnavailable(f"the follower of {self.key!r} had no answer yet from {where}",
                                    operation="read key", key=self.key)
        raise ConsulUnavailable(f"the follower of {self.key!r} could not read the key from {where}: {failure}",
                                operation="read key", key=self.key,
                                status=getattr(failure, "status", None)) from failure

    def wait_for_first_read(self, timeout: float | None = None) -> bool:
        """Block until the key has been read once; False if *timeout* passed
        first (never raises for an unreachable Consul: :meth:`wait_for_leader`
        does).

        :param timeout: seconds to wait; None for no limit.
        :raises NotRunning: :meth:`start` was not called.

        .. versionadded:: 0.2"""
        if self._thread is None:
            raise NotRunning("Follower.wait_for_leader() needs start() first")
        return self._seen.wait(timeout)

    async def wait_for_leader_async(self, timeout: float | None = None) -> str | None:
        """The asyncio form of :meth:`wait_for_leader`; it never blocks the loop.

        :param timeout: seconds to wait for the first read; None for no limit.
        :raises NotRunning: :meth:`start` was not called.
        :raises ConsulUnavailable: as :meth:`wait_for_leader`.
        :raises PermissionDenied: as :meth:`wait_for_leader`.

        .. versionadded:: 0.2"""
        return await aio.wait_for_leader_async(self, timeout)

    def changes(self) -> Iterator[str | None]:
        """Yield the leader's identity (None: nobody) each time it changes,
        starting with the current one, until :meth:`stop`."""
        with self._lock:
            first = self._info if self._seen.is_set() else None
            changes = self._changes.subscribe(first)
        return (info.identity for info in changes)

    def _loop(self) -> None:
        watch = KeyWatch(self.client, self.key)
        wait: float | None = None
        # Jittered and capped (Consul may be down for hours): followers that
        # lost their agent together do not return in step.
        backoff = tenacity.wait_random_exponential(multiplier=0.2, max=10.0)
        failures = 0
        while not self._stop.is_set():
            try:
                entry = watch.read(wait)
            except Exception as exc:
                if self._stop.is_set():
                    break
                failures += 1
                with self._lock:
                    self._failure = exc
                if isinstance(exc, PermissionDenied):
                    self._settled.set()
                elif not self._seen.is_set() and not self._stop.is_set():
                    self._settled.clear()  # a policy fixed meanwhile: the waits wait again
                if isinstance(exc, ConsulLeaderError):
                    log.warning("follower of %r cannot read the key: %s", self.key, exc)
                    signals.send(signals.election_error, self, error=exc)
                else:  # a garbled answer (a proxy, a wrong port): never a dead thread
                    log.exception("follower of %r got an unexpected error reading the key; retrying", self.key)
                self._stop.wait(backoff(cast(tenacity.RetryCallState, _Attempt(failures))))
                continue
            failures = 0
            self._failure = None
            wait = self._wait
            info = LeaderInfo.from_entry(entry)
            first = not self._seen.is_set()
            if first or not info.same_leader(self._info):
                with self._lock:
                    self._info = info
                    self._seen.set()
                    self._settled.set()
                    self._changes.publish(info)
                log.info("leader of %r is now %r", self.key, info.identity)
                signals.send(signals.leader_changed, self, leader=info.identity)


class _Attempt:
    """What a tenacity wait strategy reads of a retry state."""

    def __init__(self, number: int) -> None:
        self.attempt_number = number
