"""Who takes part in the election of a key: the roster.

Each candidate writes one entry for the key it runs for, locked by its
session, under a root of its own (:data:`ROSTER_ROOT`), not under the key:
an operator's ``consul kv delete -recurse`` of the key's folder must not
erase it. The entry says who the candidate is and the lock-delay it needs
(``consul-leader run``'s is longer than a library candidate's). It stays
locked while the candidate's session lives; a clean stop deletes it; a
crash leaves it free (Consul releases what an invalidated session held),
still telling the lock-delay its work may need.

That is the evidence a new holder needs when Consul's lock-delay covered
nothing (the key deleted, or released by someone else): if the roster shows
nobody else, nobody else can still be doing the key's work and the holder
leads at once; otherwise it holds the longest lock-delay it finds. And it is
what kazoo's ``contenders()`` gives: :class:`Contender`, one per entry.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .entry import KeyEntry
from .errors import ConsulLeaderError

__all__ = ["ROSTER_ROOT", "Contender", "Roster", "contenders_of", "hold_for_others", "nobody_else", "on_roster",
           "read_roster", "roster_prefix"]

if TYPE_CHECKING:
    from .client import ConsulClient

log = logging.getLogger("consul_leader")

#: The folder under which every key's roster lives.
ROSTER_ROOT = "consul-leader/participants/"


def roster_prefix(key: str) -> str:
    """The folder of *key*'s roster: one entry per candidate, by session ID."""
    return f"{ROSTER_ROOT}{key.strip('/')}/"


@dataclass(frozen=True)
class Contender:
    """One candidate of a key, as its roster entry shows it.

    :ivar identity: the candidate's identity.
    :ivar host: the host it runs on.
    :ivar pid: its process ID (None: not written).
    :ivar since: when it joined, in Unix seconds (None: not written).
    :ivar lock_delay: the lock-delay its work needs, in seconds.
    :ivar session: the session holding its entry; None once that session
        ended (the process crashed, or its agent lost it) and the entry was
        left behind.
    :ivar leading: whether that session holds the key's lock.
    :ivar has_led: whether it ever took the key's lock (its entry is
        rewritten in the acquisition's own transaction); one that never did
        cannot be doing the key's work.
    :ivar entry: the roster entry's key in Consul's KV store.
    :ivar modify_index: the entry's ModifyIndex (for removing it only as read).
    """

    identity: str
    host: str
    pid: int | None
    since: float | None
    lock_delay: float
    session: str | None
    leading: bool
    has_led: bool
    entry: str
    modify_index: int

    @property
    def alive(self) -> bool:
        """Whether its session still lives (the process heart-beats)."""
        return self.session is not None

    @classmethod
    def parse(cls, entry: KeyEntry, holder: str | None) -> Contender:
        """The contender of a roster entry; *holder*: the session holding the key."""
        try:
            fields = json.loads(entry.value.decode("utf-8"))
            if not isinstance(fields, dict):
                raise ValueError("not an object")
        except ValueError:
            # Not written by us: someone else's, so of unknown needs.
            fields = {}
        pid, since, lock_delay = fields.get("pid"), fields.get("since"), fields.get("lock_delay")
        return cls(identity=str(fields.get("identity", "")), host=str(fields.get("host", "")),
                   pid=pid if isinstance(pid, int) else None,
                   since=float(since) if isinstance(since, (int, float)) else None,
                   lock_delay=float(lock_delay) if isinstance(lock_delay, (int, float)) else _UNKNOWN_DELAY,
                   session=entry.session, leading=entry.session is not None and entry.session == holder,
                   has_led=fields.get("led", True) is not False,
                   entry=entry.key, modify_index=entry.modify_index)


#: The lock-delay assumed for an entry that does not say its own: Consul's
#: largest.
_UNKNOWN_DELAY = 60.0
#: Reads of the roster before it counts as unreadable, and the pause between.
_READ_TRIES = 3
_READ_RETRY = 0.2


def nobody_else(contenders: Iterable[Contender] | None, own_session: str) -> bool:
    """Whether the roster proves that no other candidate can still be doing
    the key's work: it shows this session's own entry (so this token reads
    the roster) and no other that ever took the lock, live or left by a
    crash. Candidates that start together for a new key have all joined,
    and none has led: the first to take the lock leads at once."""
    if contenders is None:
        return False
    listed = list(contenders)
    return any(c.session == own_session for c in listed) and \
        not any(c.has_led for c in listed if c.session != own_session)


def on_roster(contenders: Iterable[Contender] | None, session: str | None) -> bool:
    """Whether *session* has an entry on the roster, live or left behind
    (the entry's name is its session ID)."""
    return session is not None and any(c.entry.rsplit("/", 1)[-1] == session for c in contenders or ())


def hold_for_others(contenders: Iterable[Contender] | None, own_session: str, own: float) -> float:
    """The lock-delay to hold a lock that Consul's lock-delay did not cover:
    the longest that this candidate and every other candidate on the roster
    need (a ``consul-leader run`` command may run for its grace after its
    lease). *contenders* None (the roster could not be read): the longest
    Consul allows, since the roster was the only place that told."""
    if contenders is None:
        return max(own, _UNKNOWN_DELAY)
    return max([own] + [c.lock_delay for c in contenders if c.session != own_session and c.has_led])


class Roster:
    """One candidate's entry on *key*'s roster.

    :param client: the Consul client.
    :param key: the lock key.
    :param identity: the candidate's identity.
    :param lock_delay: the lock-delay its work needs, in seconds.
    """

    def __init__(self, client: ConsulClient, key: str, identity: str, lock_delay: float) -> None:
        self.client = client
        self.key = key
        self.prefix = roster_prefix(key)
        fields = {"identity": identity, "host": socket.gethostname(), "pid": os.getpid(),
                  "since": round(time.time(), 3), "lock_delay": lock_delay}
        self.value = json.dumps(dict(fields, led=False), sort_keys=True).encode("utf-8")
        self._led_value = json.dumps(dict(fields, led=True), sort_keys=True).encode("utf-8")
        #: This candidate's entry while it is on the roster.
        self.entry: str | None = None

    def join(self, session_id: str) -> bool:
        """Put this candidate on the roster, its entry locked by *session_id*
        (once per session); False if it cannot be."""
        entry = self.prefix + session_id
        if self.entry == entry:
            return True
        if self.entry is not None:
            self.leave()  # a session that is gone
        try:
            joined = self.client.put_locked(entry, self.value, session_id)
        except ConsulLeaderError as exc:
            # The acquisition puts the entry there anyway, or says why not.
            log.debug("could not join the roster at %r: %s", entry, exc)
            return False
        if joined:
            self.entry = entry
        return joined

    def with_lock(self, session_id: str) -> list[tuple[str, bytes]]:
        """What to lock beside the key in each acquisition: this candidate's
        entry, saying it took the lock. Always, whatever :meth:`join`
        answered: a lock is never taken without its holder on the roster,
        or a later first holder could not see it (a token that may not
        write the roster cannot lead; the error names the rule)."""
        return [self.led_entry(session_id)]

    def led_entry(self, session_id: str) -> tuple[str, bytes]:
        """This candidate's entry for *session_id* and its value once it
        took the lock: what a leader's heartbeat puts back if someone
        deleted it (see :class:`~consul_leader.session.Session`)."""
        self.entry = self.prefix + session_id
        return self.entry, self._led_value

    def put_back(self, session_id: str) -> None:
        """Put this candidate's entry back, marked ``led``, after someone
        deleted it while it leads (``consul kv delete -recurse
        consul-leader/``), so that the key's next first holder sees that
        someone led it. Errors are logged: the next heartbeat round tries
        again."""
        entry, value = self.led_entry(session_id)
        log.warning("the roster entry %r was deleted while its candidate leads; putting it back", entry)
        try:
            self.client.put_locked(entry, value, session_id)
        except ConsulLeaderError as exc:
            log.warning("could not put the roster entry %r back (%s); trying again next round", entry, exc)

    def leave(self) -> None:
        """Take this candidate off the roster (a clean stop: its work is
        over). Errors are logged: a left-over entry costs the next first
        holder one lock-delay, never safety."""
        entry, self.entry = self.entry, None
        if entry is None:
            return
        try:
            self.client.delete_key(entry)
        except ConsulLeaderError as exc:
            log.debug("could not leave the roster at %r: %s", entry, exc)

    def take_entry(self) -> str | None:
        """This candidate's entry, forgotten here, for its owner to delete
        with others in one transaction (an Elector's keys, as it stops)."""
        entry, self.entry = self.entry, None
        return entry

    def read(self, holder: str | None = None, tries: int = _READ_TRIES) -> list[Contender] | None:
        """The key's contenders, *holder* being the session that holds the
        key; None if the roster could not be read in *tries* (then it
        proves nothing, and says nothing of the lock-delays it holds)."""
        for attempt in range(tries):
            try:
                _, raw = self.client.get_prefix(self.prefix)
                return read_roster(raw, self.prefix, holder)
            except ConsulLeaderError as exc:
                log.debug("could not read the roster of %r: %s", self.key, exc)
                if attempt + 1 < tries:
                    time.sleep(_READ_RETRY)
        return None

    def forget(self, contenders: Iterable[Contender]) -> None:
        """Remove the entries that crashed candidates left, once a hold as
        long as their lock-delay has passed since they were read: their
        work is over. Each goes only if unchanged since then."""
        for contender in contenders:
            if contender.alive:
                continue
            try:
                self.client.delete_key_if_index(contender.entry, contender.modify_index)
            except ConsulLeaderError as exc:
                log.debug("could not remove the roster entry %r: %s", contender.entry, exc)



def _is_json_object(value: bytes) -> bool:
    try:
        return isinstance(json.loads(value.decode("utf-8")), dict)
    except ValueError:
        return False


def read_roster(raw: Mapping[str, Any], prefix: str, holder: str | None) -> list[Contender]:
    """Parse a listing of the roster folder *prefix* (KV entries by key),
    *holder* being the session that holds the key. The rosters of the keys
    below this one (``svc/x/y`` below ``svc/x``) share the folder: only the
    entries directly in it count."""
    own = [KeyEntry.parse(one) for name, one in raw.items() if name[len(prefix):] and "/" not in name[len(prefix):]]
    # The folder's own key (the UI's "create folder") is not an entry; nor is
    # a note nobody locked: a candidate's entry is locked by its session
    # until that ends, and then keeps its JSON.
    kept = [entry for entry in own if entry.session is not None or _is_json_object(entry.value)]
    return sorted((Contender.parse(entry, holder) for entry in kept),
                  key=lambda c: (c.since is None, c.since or 0.0, c.entry))


def contenders_of(client: ConsulClient, key: str) -> list[Contender]:
    """*key*'s contenders, in the order they joined: its roster, and which of
    them holds the key (two reads).

    :raises ConsulLeaderError: Consul could not be read."""
    _, raw = client.get_key(key)
    holder = raw.get("Session") if raw else None
    prefix = roster_prefix(key)
    _, listing = client.get_prefix(prefix)
    return read_roster(listing, prefix, holder or None)
