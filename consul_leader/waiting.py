"""How a :class:`~consul_leader.Candidate` waits for its key between terms:
blocking queries on the lock (never a sleep loop), the waiting line, a
lock-delay or a sit-out waited out, and the stagger of a crowd that saw the
same release. The candidate's election thread is the only caller."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from .client import ConsulClient
from .decisions import SitOut, held_by_another
from .entry import KeyEntry
from .errors import ConsulLeaderError, SessionLost
from .follower import KeyWatch
from .interrupt import clear_wake
from .line import WaitingLine
from .session import Clock, Session

__all__ = ["IDLE_WAIT", "KeyWaiter"]

#: Longest blocking query of a waiting candidate: long, to keep an idle
#: follower cheap (stop() interrupts it), yet bounded so that a connection
#: that died without a reset is noticed within a minute.
IDLE_WAIT = 30.0


class KeyWaiter:
    """One candidate's waiting for one key.

    :param client: the candidate's Consul client.
    :param key: the lock key.
    :param identity: written into the candidate's place in the line.
    :param check_ttl: the candidate's check TTL (how long a line's blocking
        query may wait between looks at the lock).
    :param clock: the candidate's clock.
    :param stopping: set when the candidate stops: every wait ends.
    :param session: the candidate's current session, if any.
    :param observe: called with every entry of the lock key read.
    """

    def __init__(self, client: ConsulClient, key: str, identity: str, check_ttl: float, clock: Clock,
                 stopping: threading.Event, session: Callable[[], Session | None],
                 observe: Callable[[KeyEntry | None], None]) -> None:
        self.client = client
        self.key = key
        self.check_ttl = check_ttl
        self._clock = clock
        self._stopping = stopping
        self._session = session
        self._observe = observe
        #: Only the first in line watches the lock; the others each watch
        #: the one before them, so that a release wakes one waiter, not all.
        self.line = WaitingLine(client, key, identity)
        # The crowd on a key: every waiter sees a release at once. One that
        # lost the last race waits a moment, watching the key, before trying,
        # so the rest do not all send a (Raft) write that can only fail.
        #: The last wait ended with the key seen free.
        self.saw_free = False
        #: The last acquisition, sent after the key was seen free, lost to another.
        self.lost_race = False
        self._acquire_seconds: float | None = None

    def acquired_in(self, seconds: float) -> None:
        """An acquisition took *seconds*: the stagger of a crowd scales with it."""
        last = self._acquire_seconds
        self._acquire_seconds = seconds if last is None else 0.8 * last + 0.2 * seconds

    def wait_in_line(self, session: Session, watch: KeyWatch) -> None:
        """Wait for the lock as one of a line: block on the waiter before
        this one until it is first, then on the lock (see :mod:`.line`)."""
        line = self.line
        if line.enabled:
            assert session.id is not None
            try:
                line.wait_turn(session.id, lambda: self._stopping.is_set() or session.lost.is_set(),
                               look=self._look_free, wait=min(IDLE_WAIT, max(5.0, 3 * self.check_ttl)),
                               patience=self.check_ttl)
            except SessionLost:
                session.lost.set()
                return  # joining told us before the heartbeat did: make a new session now
            except ConsulLeaderError:
                if session.lost.is_set():
                    clear_wake()
                    return  # woken by the heartbeat: make a new session now
                raise
            if self._stopping.is_set() or session.lost.is_set():
                return
        self.wait(watch)

    def _look_free(self) -> bool:
        """Read the lock for a waiter in line: observed, and whether it is free."""
        entry = KeyEntry.parse_optional(self.client.get_key(self.key)[1])
        self._observe(entry)
        return entry is None or entry.free

    def wait(self, watch: KeyWatch, hold_off_until: float | None = None, sit_out: SitOut | None = None) -> None:
        """Block on the key (blocking queries, never a sleep loop) until it is
        free and no hold-off runs. While a hold-off runs (a lock-delay, a
        sit-out after stepping down), return as soon as another candidate
        holds the lock, so that the next round waits for that one instead; a
        *sit_out* also ends once someone else took the lock since (see
        :meth:`SitOut.over <consul_leader.decisions.SitOut.over>`)."""
        entry = watch.entry if watch.index else watch.read()
        self._observe(entry)
        staggered = False
        while not self._stopping.is_set():
            now = self._clock()
            held = self.held_by_another(entry)
            if hold_off_until is None:
                if not held and self.lost_race and not staggered and watch.index:
                    staggered = True
                    entry = watch.read(self.stagger())  # returns at once if someone takes it meanwhile
                    self._observe(entry)
                    continue
                if not held:
                    self.saw_free = True
                    return
            else:
                if held or now >= hold_off_until:
                    return
                if sit_out is not None and sit_out.taken_since(entry):
                    return
            wait = IDLE_WAIT if hold_off_until is None else max(hold_off_until - now, 0.01)
            try:
                entry = watch.read(wait)
            except ConsulLeaderError:
                session = self._session()
                if session is not None and session.lost.is_set():
                    clear_wake()
                    return  # woken by the heartbeat: make a new session now
                raise
            self._observe(entry)
            session = self._session()
            if session is None or session.lost.is_set():
                return

    def wait_if_held(self, watch: KeyWatch) -> None:
        """After a hold-off that ended because someone else took the lock:
        wait for them to let go, rather than sending an acquire that can only
        fail (a Raft write, in the middle of their handover)."""
        if watch.index and self.held_by_another(watch.entry) and not self._stopping.is_set():
            self.wait(watch)

    def held_by_another(self, entry: KeyEntry | None) -> bool:
        """Whether another session holds the lock (see :func:`~consul_leader.decisions.held_by_another`)."""
        session = self._session()
        return held_by_another(entry, session.id if session is not None and not session.lost.is_set() else None)

    def stagger(self) -> float:
        """How long a waiter that lost the last race lets the others go
        first: random, within a few acquisitions' time (at least 1 ms: Consul
        reads a zero wait as its default of minutes)."""
        window = min(max(4 * (self._acquire_seconds or 0.005), 0.005), 0.05)
        return random.uniform(0.001, window)
