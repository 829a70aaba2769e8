"""The decisions of an election, apart from its I/O.

What both engines (:class:`~consul_leader.Candidate`, one key, and
:class:`~consul_leader.Elector`, many keys on one session) decide from what
Consul answered, their own state and the time: whether a term's lock is
still its own, whether another session holds a key, what a step-down does
next (release, sit out) and when the sit-out is over, how long to wait after
a refusal because of a lock-delay. The lock-delay rules themselves (whether
a lock follows what was seen, how long to hold it) are in
:mod:`consul_leader.lockdelay`.

Pure code: no request, no thread, no clock of its own; every time is passed
in, on the caller's clock. Drivers carry the decisions out; a deterministic
simulator can drive the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .entry import KeyEntry
from .events import Reason
from .lockdelay import FreeSince, LockAttempt, holder_lock_delay, lock_delay_to_hold, release_mark, released_by_holder
from .roster import Contender, hold_for_others, nobody_else, on_roster

__all__ = ["AfterTerm", "KeyView", "SitOut", "after_term", "held_by_another", "hold_with_roster",
           "is_consul_lock_key", "lock_check", "released_entry", "retry_after_lock_delay"]


def lock_check(entry: KeyEntry | None, session_id: str, identity: str) -> Reason | None:
    """Why a term's lock is no longer its own, from *entry* read while it
    leads; None while the key still shows it.

    :param entry: the key as read (None: it does not exist).
    :param session_id: the term's session.
    :param identity: what the term wrote into the key."""
    if entry is None or entry.session != session_id:
        return Reason.LOCK_LOST
    if entry.value != identity.encode("utf-8"):
        return Reason.KEY_OVERWRITTEN
    return None


def held_by_another(entry: KeyEntry | None, own_session: str | None) -> bool:
    """Whether a session other than *own_session* holds *entry*'s lock.

    Our own session holding it while no term has it (an acquisition whose
    answer was lost) is not "another": taking it again is the only way it
    ever becomes free or led.

    :param own_session: this participant's live session, or None."""
    return entry is not None and entry.session is not None and entry.session != own_session


@dataclass(frozen=True)
class SitOut:
    """A participant that stepped down stays out of the election until
    *until* (its clock), or until someone else took the lock since.

    :ivar until: when the sit-out ends at the latest.
    :ivar lock_index: the key's LockIndex in the term that stepped down.
    """

    until: float
    lock_index: int

    def over(self, entry: KeyEntry | None, now: float) -> bool:
        """True once the sit-out ended: its time passed, or *entry* shows
        that another session took the lock after the term (even if it let
        it go again)."""
        return now >= self.until or self.taken_since(entry)

    def taken_since(self, entry: KeyEntry | None) -> bool:
        """True if *entry* shows a lock taken after the term's."""
        return entry is not None and entry.lock_index > self.lock_index

    def unclaimed(self, entry: KeyEntry | None, now: float) -> bool:
        """True if the sit-out ran its whole time with the key free and
        nobody's lock since: the waiters do not take it (the first in line
        is frozen, or its agent refuses it), and the one that sat out takes
        it back now rather than queue behind them, which would cost the
        frozen one's check TTL, or for ever while it stays alive."""
        return now >= self.until and entry is not None and entry.free and not self.taken_since(entry)


@dataclass(frozen=True)
class AfterTerm:
    """What follows the end of a term, once its job returned and its
    ``deposed`` receivers ran.

    :ivar release: release the lock (else it is already gone, or the
        session that held it is).
    :ivar sit_out: stay out this long before running again (a voluntary end
        gives the others a turn), or None to run again at once.
    """

    release: bool
    sit_out: SitOut | None


def after_term(reason: Reason, lock_index: int, now: float, check_ttl: float) -> AfterTerm:
    """Decide what a term ended for *reason* does next.

    :param reason: why the term ended.
    :param lock_index: the key's LockIndex at the term's acquisition.
    :param now: the time the term ended, on the caller's clock.
    :param check_ttl: how long a participant that stepped down sits out at most."""
    sit_out = SitOut(now + check_ttl, lock_index) if reason.voluntary else None
    return AfterTerm(release=reason.must_release, sit_out=sit_out)


def retry_after_lock_delay(now: float, lock_delay: float, refused_since: float | None = None,
                           poll: float | None = None) -> float:
    """When to try again after Consul refused an acquisition because a
    lock-delay runs. It started no earlier than the first refusal in a row
    (*refused_since*; None: *now*'s), so it is over one *lock_delay* (the
    longest a holder of the key needs) after that, not after each refusal.
    Consul does not say when it ends: with *poll*, try every *poll* seconds
    until then. Refused past that end (a longer lock-delay than known), try
    every *poll* (or *lock_delay*) seconds from now on."""
    end = (now if refused_since is None else refused_since) + lock_delay
    step = lock_delay if poll is None else poll
    if end <= now:
        return now + step
    return min(end, now + step)


def is_consul_lock_key(key: str) -> bool:
    """Whether *key* is the one ``consul lock PREFIX`` locks (``PREFIX/.lock``),
    which ``consul-leader run`` can share with it."""
    return key == ".lock" or key.endswith("/.lock")


def hold_with_roster(view: KeyView, attempt: LockAttempt, seen: KeyEntry | None, session_id: str, hold: float,
                     why: str, contenders: list[Contender] | None, shared: bool) -> tuple[float, str]:
    """Amend :meth:`KeyView.hold_off`'s *hold* (and *why*) with what the
    key's roster shows (*contenders*, read after the acquisition; None: it
    could not be read), for a lock that no Consul lock-delay covered.

    The key's first lock is led at once when the roster proves that nobody
    else can still be doing its work (:func:`~.roster.nobody_else`): a new
    key, or one deleted after its last holder stopped. Any other such lock
    is held the longest lock-delay any contender that took the lock needs,
    which covers ``consul-leader run`` beside library candidates when its
    flags were lost with the key. *shared*: the key is also ``consul
    lock``'s, whose holders are on no roster: the roster proves nothing.

    So is a lock taken after a release mark that names a holder *view* did
    not see (it started while the key was free): a mark is anyone's to
    write, but once its holder stopped, the roster shows nobody who led."""
    if hold <= 0 or view.follows(attempt, seen, session_id) or shared:
        return hold, why
    unseen_release = seen is not None and released_by_holder(seen) and attempt.lock_index == seen.lock_index + 1
    # A holder seen that is not on the roster (another tool's, or an older
    # version's) makes the roster prove nothing about it.
    known = view.last_holder in (None, session_id) or on_roster(contenders, view.last_holder)
    if (attempt.lock_index == 1 or unseen_release) and known and nobody_else(contenders, session_id):
        return 0.0, ""
    return hold_for_others(contenders, session_id, hold), why


def released_entry(key: str, session_id: str, lock_index: int, create_index: int, modify_index: int) -> KeyEntry:
    """The key as a holder's own release left it: free, its lock count that
    of the released term, at the release's index.

    A participant that released a key after its term (its job joined, its
    ``deposed`` receivers done) has seen it free: its next lock follows
    this, and is led at once, unless someone else took the key in between.
    Without it, the last read it has is older than its own term, and its
    next lock would be held a whole lock-delay with nobody leading.

    :param session_id: the released session.
    :param lock_index: the released term's LockIndex.
    :param create_index: the key's CreateIndex in that term.
    :param modify_index: the key's ModifyIndex the release answered."""
    return KeyEntry(key=key, value=release_mark(session_id, lock_index), lock_index=lock_index,
                    create_index=create_index,
                    modify_index=modify_index)


class KeyView:
    """What one participant has seen of one key: the entry last read, who
    led it, since when it was free after an invalidation, and the longest
    lock-delay its holders wrote. Both engines feed it every entry they read
    (:meth:`observe`) and ask it how long to hold a lock (:meth:`hold_off`).

    :ivar seen: the entry last observed (None: absent, or not read yet).
    :ivar leader: the identity of the leader as last observed; the engine
        sets its own while it leads.
    :ivar longest_delay: the longest lock-delay a holder of the key wrote
        into its flags, among the entries observed.
    """

    __slots__ = ("seen", "leader", "longest_delay", "last_holder", "own_lock", "_holder", "_free_since")

    def __init__(self) -> None:
        self.seen: KeyEntry | None = None
        #: The session last seen holding the key: a release mark counts
        #: only if it names that one (or the participant's own).
        self.last_holder: str | None = None
        #: ``(CreateIndex, LockIndex)`` of the participant's own last term,
        #: set by the engine once that term's work has returned.
        self.own_lock: tuple[int, int] | None = None
        self.leader: str | None = None
        self.longest_delay = 0.0
        self._holder: tuple[str | None, str | None] = (None, None)
        self._free_since = FreeSince()

    def observe(self, entry: KeyEntry | None, now: float) -> bool:
        """Note *entry*, read at *now*; True if it names another leader than
        the last one observed (another identity, or the same one holding the
        lock with another session: a restarted process is another leader)."""
        self.seen = entry
        self._free_since.see(entry, now)
        self.longest_delay = max(self.longest_delay, holder_lock_delay(entry) or 0.0)
        if entry is not None and entry.session is not None:
            self.last_holder = entry.session
        holder = (None, None) if entry is None or entry.session is None else \
            (entry.value.decode("utf-8", "replace"), entry.session)
        if holder == self._holder:
            return False
        self._holder = holder
        self.leader = holder[0]
        return True

    def hold_off(self, attempt: LockAttempt, seen: KeyEntry | None, session_id: str, now: float,
                 lock_delay: float) -> tuple[float, str]:
        """How long to hold the lock *attempt* took before leading it, and
        why (see :meth:`LockAttempt.hold_off`): *seen* is the key as read
        before the acquisition was sent; the lock-delay held is the longest
        of *lock_delay* (the participant's) and the holders'."""
        if seen is not None and (seen.create_index, seen.lock_index) == self.own_lock and \
                attempt.lock_index == seen.lock_index + 1 and attempt.create_index == seen.create_index:
            # The last lock before ours was our own, and its work is over:
            # however it ended (our session invalidated in an outage, the
            # key last read while that session still held it), there is
            # nobody else's work to wait for.
            return 0.0, ""
        return attempt.hold_off(seen, session_id, self._free_since.of(seen), now,
                                lock_delay_to_hold(lock_delay, self.longest_delay), self.last_holder)

    def follows(self, attempt: LockAttempt, seen: KeyEntry | None, session_id: str) -> bool:
        """Whether *attempt* follows *seen* (:meth:`LockAttempt.follows`), a
        release mark counting only from the holder last observed."""
        return attempt.follows(seen, session_id, self.last_holder)
