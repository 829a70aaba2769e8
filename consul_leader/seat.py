"""One participant's place in one key's election (:class:`Seat`): what
the term engine (:mod:`consul_leader.term`) and the public per-key API
share, and the decisions about a lock just taken that need the key's
roster and its flags: how long to hold it before leading, noting a longer
hold in the key, and giving up a lock held but not yet led.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .client import ConsulClient
from .decisions import KeyView, SitOut, hold_with_roster, is_consul_lock_key, retry_after_lock_delay
from .entry import KeyEntry
from .events import Broadcast, LeadershipEvent
from .lockdelay import LockAttempt, holder_flags, lock_delay_to_hold, release_mark
from .roster import Contender, Roster
from .session import Session

if TYPE_CHECKING:
    from .job import Job
    from .term import Term

__all__ = ["LOCK_DELAY_POLL", "Seat"]

#: While a lock-delay keeps the key, try again at least this far apart:
#: Consul answers such a refusal from the Raft leader's memory, without a
#: Raft write.
LOCK_DELAY_POLL = 0.25


class Seat:
    """One participant's place in one key's election: what the term engine
    and the public per-key API (:class:`~consul_leader.participant.Participant`)
    share. A Candidate has one; an Elector one per key.

    :param sender: the participant, the sender of its signals.
    :param key: the key.
    :param identity: what the participant writes into the key.
    :param client: the participant's Consul client.
    :param lock_delay: the lock-delay the participant's work needs."""

    __slots__ = ("sender", "key", "identity", "client", "lock_delay", "term", "view", "events", "job", "sit_out",
                 "released_at", "roster", "also_lock", "refused_since")

    def __init__(self, sender: Any, key: str, identity: str, client: ConsulClient, lock_delay: float) -> None:
        self.sender = sender
        self.key = key
        self.identity = identity
        self.client = client
        self.lock_delay = lock_delay
        #: The participant's entry on the key's roster (see :mod:`~consul_leader.roster`).
        self.roster = Roster(client, key, identity, lock_delay)
        #: ``(key, value)`` pairs locked with each lock on the key, and released with it.
        self.also_lock: list[tuple[str, bytes]] = []
        #: When Consul first refused an acquisition for a lock-delay, in a row (None: the last one was not).
        self.refused_since: float | None = None
        #: The term being led, until a step-down: ``is_leader()`` reads it.
        self.term: Term | None = None
        #: What this participant has seen of the key.
        self.view = KeyView()
        self.events: Broadcast[LeadershipEvent] = Broadcast()
        self.job: Job | None = None
        #: After stepping down: stay out until then, or until someone else took the key.
        self.sit_out: SitOut | None = None
        #: The key's ModifyIndex the last release of ours left (None: none since it was last used).
        self.released_at: int | None = None

    def refused_for_lock_delay(self, now: float, *, poll: bool) -> float:
        """Consul refused an acquisition because a lock-delay runs: when to
        try again (:func:`~consul_leader.decisions.retry_after_lock_delay`),
        one lock-delay (the longest a holder of the key needs) from the
        first refusal in a row, not from each.

        :param poll: try a few times within it (at most eight, at least
            :data:`LOCK_DELAY_POLL` apart) rather than once at its end."""
        if self.refused_since is None:
            self.refused_since = now
        lock_delay = lock_delay_to_hold(self.lock_delay, self.view.longest_delay)
        return retry_after_lock_delay(now, lock_delay, self.refused_since,
                                      poll=max(LOCK_DELAY_POLL, lock_delay / 8) if poll else None)

    def lock_also(self, session_id: str) -> list[tuple[str, bytes]]:
        """What each acquisition locks beside the key: the roster entry
        (saying it took the lock), then :attr:`also_lock`."""
        return self.roster.with_lock(session_id) + self.also_lock

    def hold_off(self, attempt: LockAttempt, seen: KeyEntry | None, session_id: str,
                 now: float) -> tuple[float, str, list[Contender] | None]:
        """How long to hold the lock *attempt* took before leading it, and
        why (:meth:`KeyView.hold_off <consul_leader.decisions.KeyView.hold_off>`),
        amended by what the roster shows when no lock-delay of Consul's
        covered the lock (:func:`~consul_leader.decisions.hold_with_roster`);
        and the contenders read then (None: not read)."""
        hold, why = self.view.hold_off(attempt, seen, session_id, now, self.lock_delay)
        if hold <= 0 or self.view.follows(attempt, seen, session_id):
            return hold, why, None
        contenders = self.roster.read(session_id)
        hold, why = hold_with_roster(self.view, attempt, seen, session_id, hold, why, contenders,
                                     shared=is_consul_lock_key(self.key))
        return hold, why, contenders

    def note_hold(self, session_id: str, attempt: LockAttempt, hold: float) -> LockAttempt | None:
        """Before holding a lock for another holder's lock-delay longer than
        this participant's: write it into the key's flags, so that whoever
        takes the key after this session ends (a crash during the hold)
        holds it as long. The acquisition with its new ModifyIndex (the
        term's fencing token from here on), *attempt* itself if no longer
        hold is due, or None if the key changed meanwhile (look again).

        :raises ConsulLeaderError: the write failed."""
        if hold <= self.lock_delay:
            return attempt
        assert attempt.modify_index is not None
        rewritten = self.client.set_flags_if_index(self.key, self.identity.encode("utf-8"),
                                                   holder_flags(int(time.time() * 1000), hold),
                                                   attempt.modify_index, session_id)
        if rewritten is None:
            return None
        return LockAttempt(rewritten, attempt.delayed, attempt.lock_index, attempt.create_index)

    def drop_held_lock(self, session: Session, attempt: LockAttempt) -> None:
        """Give up a lock held before leading it (stopped or withdrawn
        during the hold): delete the key, only as this acquisition left it,
        rather than release it or let the session's end free it. Released,
        the next candidate, which saw it free, would lead at once; freed by
        the session's end, after this one's own lock-delay, not the longer
        one the hold may be for (another holder's, from the roster). A
        deleted key's next lock is a first lock, which reads the roster.

        :raises ConsulLeaderError: Consul could not be told."""
        assert session.id is not None and attempt.modify_index is not None
        if not self.client.delete_key_if_index(self.key, attempt.modify_index):
            self.client.release(self.key, session.id)
        for other, _ in self.also_lock:
            self.client.release(other, session.id)

    def release_unled(self, session: Session, attempt: LockAttempt) -> None:
        """Release a lock taken but not led (stopped or withdrawn before its
        term began, with no hold due), as a term's end would: the release
        mark of this acquisition, guarded by its ModifyIndex, with what was
        locked with it, so that the next holder follows it at once.

        :raises ConsulLeaderError: Consul could not be told."""
        assert session.id is not None and attempt.modify_index is not None
        self.client.unlock(self.key, session.id, release_mark(session.id, attempt.lock_index),
                           index=attempt.modify_index, also_unlock=[other for other, _ in self.also_lock])
