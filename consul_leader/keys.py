"""An :class:`~consul_leader.Elector`'s keys as its worker sees them: each
key's seat (:class:`KeySeat`: its term, and where the worker is with it),
the terms of its keys (:class:`KeyTerm`: a lease per key, proven by the
heartbeat's read of the prefix), and what the prefix last showed
(:class:`PrefixView`: the entries, their index, the keys to look at again).

:mod:`consul_leader.keywork` decides, from these, what the worker does.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from . import signals
from .client import ConsulClient
from .decisions import lock_check
from .entry import KeyEntry
from .events import Reason
from .follower import PrefixChanges
from .lockdelay import LockAttempt
from .roster import Contender, roster_prefix
from .seat import Seat
from .session import Clock, Session, Timing
from .term import Term

__all__ = ["KeySeat", "KeyTerm", "PrefixView"]

#: How often an Elector looks for roster entries of the keys it leads that
#: someone deleted (seconds; see PrefixView._keep_on_roster).
_ROSTER_LOOK_EVERY = 10.0


class KeySeat(Seat):
    """One key of an elector: its seat, and where the worker is with it
    (owned by the worker thread)."""

    __slots__ = ("state", "withdrawn", "not_before", "tried_index", "modified", "delay_wait", "contenders",
                 "asked_with", "released")

    def __init__(self, sender: Any, key: str, identity: str, client: ConsulClient, lock_delay: float) -> None:
        super().__init__(sender, key, identity, client, lock_delay)
        self.state = "idle"  # idle, delay-wait, leading, withdrawn
        self.withdrawn = False
        self.not_before = -math.inf  # a lock-delay runs until then
        self.tried_index = -1  # refused as held while the prefix was at this index
        self.modified = -1  # the ModifyIndex of the key's entry last looked at
        #: A lock taken that must be held a while before it is led
        #: (LockAttempt.hold_off): until then, the attempt, its session.
        self.delay_wait: tuple[float, LockAttempt, Session] | None = None
        #: The roster as read for that wait: what crashed candidates left
        #: is removed once it is over.
        self.contenders: list[Contender] | None = None
        #: The key as seen before the last acquisition, until its term
        #: began or it was let go: what a re-take of our own lock (its
        #: answer lost) is judged against.
        self.asked_with: KeyEntry | None = None
        self.released = -1  # the fencing token of the last term whose key was released

    @property
    def key_term(self) -> KeyTerm | None:
        """The key's term being led, if any."""
        return cast("KeyTerm | None", self.term)

    def forget_parent(self) -> None:
        """In a forked child: the parent's term and wait are not ours."""
        self.term = None
        self.delay_wait = None
        self.state = "idle"
        self.roster.take_entry()  # the parent's entry: the child must never take it off the roster
        self.events = type(self.events)()
        self.events.close()


class KeyTerm(Term):
    """A term of one of an elector's keys: its lease is the session's, and
    the last read of the prefix that showed the key this session's."""

    __slots__ = ("key_seat", "deadline", "lapsed")

    def __init__(self, seat: KeySeat, session: Session, attempt: LockAttempt, started: float,
                 deadline: float) -> None:
        super().__init__(seat, session, attempt, started)
        self.key_seat = seat
        self.deadline = deadline  # the lease from the last read that showed the key ours (at most the session's)
        self.lapsed = False  # a lapsed lease stays lapsed

    def lease_end(self) -> float:
        """When this key's lease ends: the session's, and the last read that showed the key ours."""
        return min(self.deadline, self.session.lease_deadline)


class PrefixView:
    """What the worker knows of the prefix: its keys' seats, the entries
    last listed and their index, and which keys to look at again. The
    watch's listings and the heartbeat's reads come in here; a lock seen
    lost ends its term (*step_down*).

    :param client: the elector's Consul client.
    :param prefix: the prefix.
    :param timing: the elector's timing.
    :param clock: the elector's clock.
    :param lock: the elector's state lock.
    :param dispatcher: the elector's signal thread.
    :param post: runs a message on the worker thread.
    :param step_down: ends a term, from any thread.
    """

    def __init__(self, client: ConsulClient, prefix: str, timing: Timing, clock: Clock, lock: threading.RLock,
                 dispatcher: signals.Dispatcher, post: Callable[[Callable[[], None]], None],
                 step_down: Callable[[KeyTerm, Reason], bool]) -> None:
        self.client = client
        self.prefix = prefix
        self.timing = timing
        self._clock = clock
        self._lock = lock
        self._dispatcher = dispatcher
        self._post = post
        self._step_down = step_down
        self.seats: dict[str, KeySeat] = {}
        self.entries: dict[str, KeyEntry] = {}
        self.index = 0
        self.full = True  # look at every key at the next turn
        self.dirty: set[KeySeat] = set()  # keys to look at at the next turn
        self._roster_looked = -math.inf  # when _keep_on_roster last listed the roster
        self.added = False  # a key was added since the worker last looked at every key's entry

    def all(self) -> list[KeySeat]:
        """Every key's seat, as a list (keys come and go meanwhile)."""
        with self._lock:
            return list(self.seats.values())

    def due(self, now: float, next_timer: float) -> tuple[bool, list[KeySeat]]:
        """The keys to look at in this turn of the worker, and whether they
        are all of them: every key when a timer is due, otherwise those
        whose entry changed or that became idle (a handover costs the same
        with 1 key or 1,000)."""
        if self.full or now >= next_timer:
            self.full = False
            if self.added and self.index:
                # Its entry may never change again: the watch would not hand it over.
                self.added = False
                self.observe_all(self.index)
            self.dirty.clear()
            return True, self.all()
        some, self.dirty = list(self.dirty), set()
        return False, some

    def on_changes(self, changes: PrefixChanges) -> None:
        """The watch's listing: only the entries that changed since its last one."""
        if changes.reset:
            self._apply_listing(changes.index, changes.changed, reset=True)
        elif changes.index >= self.index:
            self._apply(changes.index, changes.changed, changes.removed)

    def on_listing(self, index: int, entries: dict[str, KeyEntry]) -> None:
        """A full listing (the heartbeat's read)."""
        if index >= self.index:
            self._apply_listing(index, entries, False)

    def look_at_every_key(self) -> None:
        self.full = True

    def _apply_listing(self, index: int, entries: dict[str, KeyEntry], reset: bool) -> None:
        """A full listing: apply what differs from the one known."""
        known = self.entries
        changed = {key: entry for key, entry in entries.items()
                   if (old := known.get(key)) is None or old.modify_index != entry.modify_index}
        self._apply(index, changed, known.keys() - entries.keys(), reset)

    def _apply(self, index: int, changed: dict[str, KeyEntry], removed: Iterable[str], reset: bool = False) -> None:
        """The prefix at *index*: *changed* entries, *removed* keys, every
        other key as it was; look at the keys of ours among them."""
        if index < self.index and not reset:
            return
        if not self.index:
            self.full = True  # the first listing: every key, absent ones too, can be tried now
        self.index = index
        for key in removed:
            self.entries.pop(key, None)
            seat = self.seats.get(key)
            if seat is not None:
                self._observe(seat, None, index)
        for key, entry in changed.items():
            self.entries[key] = entry
            seat = self.seats.get(key)
            if seat is not None:
                self._observe(seat, entry, index)

    def observe_all(self, index: int) -> None:
        """Every key as last listed (a key added since was never looked at)."""
        for seat in self.all():
            self._observe(seat, self.entries.get(seat.key), index)

    def _observe(self, seat: KeySeat, entry: KeyEntry | None, index: int) -> None:
        modified = entry.modify_index if entry is not None else 0
        if modified == seat.modified:
            return  # unchanged since the last look
        seat.modified = modified
        self.dirty.add(seat)
        if seat.view.observe(entry, self._clock()):
            self._dispatcher.send(signals.leader_changed, seat.sender, leader=seat.view.leader)
        term = seat.key_term
        if term is not None and term.reason is None and index >= term.fencing_token:
            assert term.session.id is not None
            lost = lock_check(entry, term.session.id, seat.identity)
            if lost is not None:
                self._step_down(term, lost)
        waiting = seat.delay_wait
        if waiting is not None and index >= (waiting[1].modify_index or 0) and \
                (entry is None or entry.session != waiting[2].id):
            seat.delay_wait, seat.state = None, "idle"

    def prove(self, session: Session, t0: float) -> None:
        """A heartbeat round of *session* (started at *t0*, the check
        passed): one read of the prefix extends each key's lease that it
        shows still held by this session, and ends the others."""
        with self._lock:
            terms = [s.key_term for s in self.seats.values()
                     if s.key_term is not None and s.key_term.session is session]
        if not terms:
            return
        index, raw = self.client.get_prefix(self.prefix)
        entries = {key: KeyEntry.parse(one) for key, one in raw.items()}
        now = self._clock()
        ended: list[tuple[KeyTerm, Reason]] = []
        with self._lock:
            for term in terms:
                if term.reason is not None or term.lapsed:
                    continue
                if now >= term.deadline:
                    term.lapsed = True
                    ended.append((term, Reason.LEASE_EXPIRED))
                    continue
                assert session.id is not None
                lost = lock_check(entries.get(term.key_seat.key), session.id, term.key_seat.identity)
                if lost is not None:
                    ended.append((term, lost))
                else:
                    term.deadline = min(session.lease_deadline, t0 + self.timing.lease)
        for term, reason in ended:
            self._step_down(term, reason)
        self._post(functools.partial(self.on_listing, index, entries))
        self._keep_on_roster(session, [term for term in terms if term.reason is None and not term.lapsed
                                       and all(term is not other for other, _ in ended)])

    def _keep_on_roster(self, session: Session, terms: list[KeyTerm]) -> None:
        """Put back the roster entries of the keys still led that someone
        deleted (see :meth:`Roster.put_back <consul_leader.roster.Roster.put_back>`):
        one listing of the prefix's roster, names only, at most every
        :data:`_ROSTER_LOOK_EVERY` seconds (per round, its cost would grow
        with the keys led; a Candidate's heartbeat checks its one entry in
        its read of the key, for nothing)."""
        now = self._clock()
        if not terms or now < self._roster_looked + _ROSTER_LOOK_EVERY:
            return
        self._roster_looked = now
        assert session.id is not None
        listed = set(self.client.list_keys(roster_prefix(self.prefix).rstrip("/")))
        for term in terms:
            roster = term.key_seat.roster
            if roster.led_entry(session.id)[0] not in listed:
                roster.put_back(session.id)
