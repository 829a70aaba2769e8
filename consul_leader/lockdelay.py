"""Consul's lock-delay, and where it does not protect a lock.

Consul enforces a lock-delay after a session is invalidated, but checks it
on the Raft leader before it commits an acquisition (not as it applies it),
keeps it only in each server's memory, and sets none for a key deleted
under its holder or for a release. These rules decide, from what a
candidate read before it sent an acquisition and what the acquisition
answered, whether the new holder may lead at once or must first wait out a
lock-delay of its own. Pure code: no I/O, no clock of its own.
"""

from __future__ import annotations

from typing import NamedTuple

from .entry import KeyEntry, RawEntry

__all__ = ["RELEASE_MARK", "FreeSince", "KeyEntry", "LockAttempt", "RawEntry", "holder_flags", "holder_lock_delay",
           "invalidated", "lock_delay_to_hold", "marked_session", "release_mark", "released_by_holder", "since_of"]

# The flags a holder writes: the acquisition's wall-clock time in Unix
# milliseconds in the low 48 bits (shown to people as "leader since"), its
# session's lock-delay in milliseconds in the high 16 (Consul allows 60 s at
# most). Once a holder's session is invalidated it is gone, and with it its
# lock-delay: what the next holder must honour travels with the key.
_SINCE_BITS = 48
_SINCE_MASK = (1 << _SINCE_BITS) - 1


def holder_flags(since_ms: int, lock_delay: float) -> int:
    """The flags a holder writes into the key as it takes the lock.

    :param since_ms: the acquisition's time, in Unix milliseconds.
    :param lock_delay: the holder's lock-delay, in seconds (at most 65.5)."""
    return (min(int(round(lock_delay * 1000)), 0xFFFF) << _SINCE_BITS) | (since_ms & _SINCE_MASK)


def since_of(flags: int) -> int:
    """The acquisition's time (Unix milliseconds) in a holder's flags; 0: unknown."""
    return flags & _SINCE_MASK


def holder_lock_delay(entry: KeyEntry | None) -> float | None:
    """The lock-delay that *entry*'s last holder wrote (None: not written,
    e.g. by an older version)."""
    if entry is None:
        return None
    ms = entry.flags >> _SINCE_BITS
    return ms / 1000 if ms else None


def lock_delay_to_hold(own: float, longest_seen: float) -> float:
    """The lock-delay to hold a lock for that no lock-delay of Consul's
    covered: the longest of this participant's and of every holder of the
    key it saw. A holder with a longer lease than ours (``consul-leader
    run`` beside library candidates) may still work after ours would end."""
    return max(own, longest_seen)

#: How the value that a holder's own release writes into the key begins;
#: the released session's ID follows.
RELEASE_MARK = b"consul-leader:released:"


def release_mark(session_id: str, lock_index: int | None = None) -> bytes:
    """The value a holder's own release writes into the key: it names the
    released session and the lock's LockIndex. Consul lets anyone who may
    write the key release it for the holder's session (``?release=<session>``,
    ``consul kv put -release``), sets no lock-delay for that, and the holder
    learns of it only from its watch, up to a lease later. Such a release
    leaves some other value (an empty one, by default), so the next holder
    can tell it from the holder's own, and waits; one that writes back an
    earlier holder's mark names another lock.

    :param lock_index: the released lock's LockIndex (None: not named, as
        releases before 0.2 wrote it; then the mark counts only from the
        holder a waiter saw)."""
    mark = RELEASE_MARK + session_id.encode("utf-8")
    return mark if lock_index is None else mark + b":" + str(lock_index).encode("ascii")


def released_by_holder(entry: KeyEntry | None, holders: tuple[str | None, ...] | None = None) -> bool:
    """Whether *entry* is free because its holder released it itself, its
    work over (the value is a :func:`release_mark`).

    :param holders: the sessions that may have released it (the holder the
        caller last saw, and its own); None: any. A mark that names the
        lock's LockIndex counts when that is *entry*'s own (a waiter that
        never saw a short term's holder still knows its release); any mark
        counts if it names one of *holders*. Any other is
        someone else's write of an old value (a script that puts back what
        it read), not this holder's release."""
    if entry is None or not entry.free or not entry.value.startswith(RELEASE_MARK):
        return False
    if holders is None:
        return True
    session, lock_index = _parse_mark(entry.value)
    # A plain write of the key (consul kv put) sets its LockIndex to 0 under
    # the holder, whose mark then names the index it took: it still counts
    # from a holder the caller saw.
    return lock_index == entry.lock_index or session in holders


def marked_session(entry: KeyEntry) -> str | None:
    """The session a :func:`release_mark` in *entry* names (None: no mark)."""
    if not entry.value.startswith(RELEASE_MARK):
        return None
    return _parse_mark(entry.value)[0]


def _parse_mark(value: bytes) -> tuple[str, int | None]:
    session, _, index = value[len(RELEASE_MARK):].decode("utf-8", "replace").partition(":")
    return session, int(index) if index.isdigit() else None



class LockAttempt(NamedTuple):
    """What :meth:`ConsulClient.acquire` found.

    :ivar modify_index: the key's ModifyIndex if the lock was taken, else None.
    :ivar delayed: not taken because a lock-delay runs (the key may be free).
    :ivar lock_index: the key's LockIndex if the lock was taken: how many
        sessions took it since the key was created (1: the first one).
    :ivar create_index: the key's CreateIndex if the lock was taken.
    """

    modify_index: int | None
    delayed: bool
    lock_index: int | None = None
    create_index: int | None = None

    def follows(self, seen: KeyEntry | None, session_id: str, last_holder: str | None = None) -> bool:
        """Whether this lock is the next one taken after *seen*, the key as
        read before the acquisition was sent, while free or this session's.

        Only then did Consul check its lock-delay against this acquisition
        after every invalidation that freed the key, so the last holder's
        work is over. Otherwise it may not be: Consul checks the lock-delay
        before it commits an acquisition, not when it applies it, so one
        sent while another session held the key wins if that session is
        invalidated in between, with no lock-delay at all. The first lock
        of a key never follows anything: a key deleted under its holder
        leaves no lock-delay either. *seen* must come from the Raft leader
        (Consul's default consistency, which every read here uses): a
        ``?stale`` read could show the key free before the leader applied
        the invalidation that set the lock-delay.

        *last_holder*: the session the caller last saw hold the key (None:
        none seen); a release mark counts only if it names that session or
        the caller's own."""
        if self.modify_index is None or seen is None or seen.create_index != self.create_index:
            return False
        before = seen.lock_index
        holder = seen.session
        if (self.lock_index or 0) < 2:
            # A key's first lock follows nothing, but one case: a plain
            # write of the locked key (``consul kv put``) keeps its session
            # and sets its LockIndex to 0, and its holder, deposed, released
            # it with its own mark: its work is over.
            return self.lock_index == 1 and before == 0 and holder is None and \
                released_by_holder(seen, (last_holder, session_id))
        if holder is None:
            # Free, and its freeing accounted for: the holder's own release,
            # or an invalidation (Consul's lock-delay covered the next lock).
            return self.lock_index == before + 1 and (released_by_holder(seen, (last_holder, session_id))
                                                      or invalidated(seen))
        # Ours all along (an answer lost), or released by us and taken again.
        return holder == session_id and self.lock_index in (before, before + 1)

    def hold_off(self, seen: KeyEntry | None, session_id: str, seen_free_at: float | None, now: float,
                 lock_delay: float, last_holder: str | None = None) -> tuple[float, str]:
        """How long to hold this lock before leading it (0: lead now), and
        why, for the log.

        A lock that does not :meth:`follow <follows>` *seen* waits one
        *lock_delay*. One that does, where *seen* was freed by an
        invalidation (a free entry that still carries its last holder's
        value; a release empties it), is led no earlier than one
        *lock_delay* after it was first seen so (*seen_free_at*, on the
        caller's clock; None: unknown): Consul keeps lock-delays in each
        server's memory, set as it applies the invalidation, so a Raft
        leader elected before it applied it, or restored from a snapshot,
        enforces none. Normally Consul's own lock-delay already kept the
        acquisition out that long, and this costs nothing."""
        if not self.follows(seen, session_id, last_holder):
            if self.lock_index == 1:
                why = "as its first holder: if it was deleted under another leader, Consul set no lock-delay"
            elif seen is not None and seen.free and self.lock_index == seen.lock_index + 1 and \
                    seen.create_index == self.create_index:
                why = ("after a release its holder did not make (someone else's ?release= of its session): "
                       "Consul set no lock-delay, and the holder may still work")
            else:
                why = ("without seeing it free first: if its last holder's session was invalidated as the "
                       "acquisition was on its way, Consul applied no lock-delay")
            return lock_delay, why
        if not invalidated(seen):
            return 0.0, ""
        first = now if seen_free_at is None else seen_free_at
        return max(0.0, first + lock_delay - now), ("after its last holder's session was invalidated: a Raft "
                                                   "leader that had not applied that applies no lock-delay")


def invalidated(entry: KeyEntry | None) -> bool:
    """Whether *entry* is free because its holder's session was invalidated
    (it keeps the holder's value; a holder's own release writes a
    :func:`release_mark`, anyone else's leaves some other value). A free
    entry with no value at all is a release someone else made."""
    return entry is not None and entry.free and bool(entry.value) and not released_by_holder(entry)


class FreeSince:
    """When one key was first seen free after an invalidation, for
    :meth:`LockAttempt.hold_off`."""

    __slots__ = ("_mark", "_at")

    def __init__(self) -> None:
        self._mark: tuple[int, int] | None = None
        self._at = 0.0

    def see(self, entry: KeyEntry | None, now: float) -> None:
        """Note *entry*, read at *now*."""
        if entry is not None and invalidated(entry):
            mark = _mark(entry)
            if mark != self._mark:
                self._mark, self._at = mark, now

    def of(self, entry: KeyEntry | None) -> float | None:
        """When *entry*, free after an invalidation, was first seen; None if
        it was not seen so."""
        return self._at if entry is not None and _mark(entry) == self._mark else None


def _mark(entry: KeyEntry) -> tuple[int, int]:
    # One free state of a key: a new lock or a re-created key changes it.
    return entry.create_index, entry.lock_index

