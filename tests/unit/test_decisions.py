"""The election's decisions, without Consul: tables of what was read, what
an acquisition answered and the time, and what each engine must decide."""

from __future__ import annotations

from typing import Optional

import pytest

from consul_leader import Reason
from consul_leader.decisions import (
    KeyView,
    SitOut,
    after_term,
    held_by_another,
    lock_check,
    released_entry,
    retry_after_lock_delay,
)
from consul_leader.entry import KeyEntry
from consul_leader.follower import LeaderInfo
from consul_leader.lockdelay import (
    FreeSince,
    LockAttempt,
    holder_flags,
    holder_lock_delay,
    invalidated,
    lock_delay_to_hold,
    release_mark,
    released_by_holder,
    since_of,
)

OURS = "session-ours"
OTHER = "session-other"
DELAY = 3.0


def entry(session: Optional[str] = None, lock_index: int = 4, create_index: int = 10, value: bytes = b"",
          modify_index: int = 50) -> KeyEntry:
    return KeyEntry(key="svc/leader", value=value, session=session, lock_index=lock_index,
                    modify_index=modify_index, create_index=create_index)


def released(lock_index: int = 4, create_index: int = 10, by: str = OTHER) -> KeyEntry:
    """The key as its holder's own release left it."""
    return entry(lock_index=lock_index, create_index=create_index, value=release_mark(by))


def taken(lock_index: int, create_index: int = 10) -> LockAttempt:
    return LockAttempt(99, delayed=False, lock_index=lock_index, create_index=create_index)


# -- KeyEntry -----------------------------------------------------------------

def test_key_entry_parses_consuls_json_once() -> None:
    raw = {"Key": "svc/leader", "Value": b"host:1", "Session": "s1", "LockIndex": 3, "ModifyIndex": 17,
           "CreateIndex": 5, "Flags": 1700000000000}
    assert KeyEntry.parse(raw) == KeyEntry("svc/leader", b"host:1", "s1", 3, 17, 5, 1700000000000)


def test_key_entry_reads_absent_and_null_fields_as_empty() -> None:
    parsed = KeyEntry.parse({"Key": "k", "Value": None, "ModifyIndex": 2})
    assert (parsed.value, parsed.session, parsed.lock_index, parsed.flags, parsed.free) == (b"", None, 0, 0, True)
    assert KeyEntry.parse_optional(None) is None


def test_key_entry_is_frozen() -> None:
    with pytest.raises(AttributeError):
        entry().session = OURS  # type: ignore[misc]


def test_leader_info_reads_a_parsed_entry_and_a_raw_one_alike() -> None:
    raw = {"Key": "k", "Value": b"host:1", "Session": "s1", "ModifyIndex": 9, "Flags": 2000}
    assert LeaderInfo.from_entry(raw) == LeaderInfo.from_entry(KeyEntry.parse(raw)) == \
        LeaderInfo("host:1", "s1", 2.0, 9)
    assert LeaderInfo.from_entry(entry()) == LeaderInfo()


# -- whether a lock follows what was seen --------------------------------------

@pytest.mark.parametrize("seen, attempt, follows", [
    (released(lock_index=4), taken(5), True),                        # the next lock after the holder's release
    (entry(lock_index=4, value=b"h"), taken(5), True),               # ... after an invalidation
    (entry(lock_index=4), taken(5), False),                          # ... after someone else's release
    (released(lock_index=4), taken(6), False),                       # someone took and lost it in between
    (released(lock_index=4, create_index=11), taken(5), False),      # the key was re-created in between
    (entry(session=OTHER, lock_index=4), taken(5), False),           # taken while another held it
    (entry(session=OURS, lock_index=4), taken(4), True),             # ours all along (an answer lost)
    (entry(session=OURS, lock_index=4), taken(5), True),             # released by us and taken again
    (entry(session=OURS, lock_index=4), taken(6), False),
    (None, taken(5), False),                                         # never read
    (entry(lock_index=0), taken(1), False),                          # a key's first lock follows nothing
    (entry(lock_index=4), LockAttempt(None, delayed=True), False),   # not taken at all
    (released(lock_index=0), taken(1), True),                        # overwritten under its holder, then released
    (released(lock_index=0, by="z"), taken(1), False),               # ... by a holder not seen last
    (entry(lock_index=0, value=b"h"), taken(1), False),              # a first lock after a plain write: nothing
    (released(lock_index=4, by="z"), taken(5), False),               # a mark of a holder not seen last (a replay)
    (released(lock_index=4, by=OURS), taken(5), True),               # our own mark
], ids=["next", "next-invalidated", "released-by-another", "skipped-one", "recreated", "held-by-other",
        "ours-lost-answer", "ours-again", "ours-skipped",
        "unseen", "first-lock", "not-taken", "overwritten-released", "overwritten-unseen-mark",
        "first-after-plain-write", "replayed-mark", "own-mark"])
def test_whether_a_lock_follows_the_key_as_seen(seen: Optional[KeyEntry], attempt: LockAttempt,
                                                 follows: bool) -> None:
    assert attempt.follows(seen, OURS, last_holder=OTHER) is follows


def test_a_release_mark_counts_only_from_the_holder_last_observed() -> None:
    view = KeyView()
    assert not view.follows(taken(5), released(lock_index=4), OURS), "no holder seen: the mark proves nothing"
    view.observe(entry(session=OTHER, lock_index=4), 1.0)
    view.observe(released(lock_index=4), 2.0)
    assert view.follows(taken(5), released(lock_index=4), OURS)
    assert not view.follows(taken(5), released(lock_index=4, by="z"), OURS)


# -- how long to hold a lock before leading it ----------------------------------

@pytest.mark.parametrize("seen, attempt, seen_free_at, now, hold", [
    (released(lock_index=4), taken(5), None, 100.0, 0.0),                    # a clean handover
    (entry(lock_index=4), taken(5), None, 100.0, DELAY),                     # released by someone else
    (entry(session=OTHER), taken(5), None, 100.0, DELAY),                    # not seen free: one lock-delay
    (entry(lock_index=0), taken(1), None, 100.0, DELAY),                     # the first holder
    (entry(value=b"host:1"), taken(5), 99.0, 100.0, DELAY - 1.0),            # invalidated, seen free 1 s ago
    (entry(value=b"host:1"), taken(5), 90.0, 100.0, 0.0),                    # ... long ago
    (entry(value=b"host:1"), taken(5), None, 100.0, DELAY),                  # ... just now
], ids=["handover", "released-by-another", "unseen-free", "first-holder", "invalidated-recently",
        "invalidated-long-ago", "invalidated-now"])
def test_how_long_a_lock_is_held_before_it_is_led(seen: KeyEntry, attempt: LockAttempt,
                                                  seen_free_at: Optional[float], now: float, hold: float) -> None:
    held, why = attempt.hold_off(seen, OURS, seen_free_at, now, DELAY, last_holder=OTHER)
    assert held == pytest.approx(hold)
    assert why or held == 0, "a hold says why, for the log"


@pytest.mark.parametrize("seen, result", [
    (None, False),
    (entry(), False),                                   # released by someone else: no value
    (released(), False),                                # released by its holder
    (entry(value=b"host:1"), True),                     # free, the last holder's value left in place
    (entry(session=OTHER, value=b"host:1"), False),     # held
])
def test_which_free_entries_an_invalidation_left(seen: Optional[KeyEntry], result: bool) -> None:
    assert invalidated(seen) is result


def test_free_since_remembers_the_first_sight_of_one_free_state() -> None:
    free_since = FreeSince()
    first = entry(value=b"host:1", lock_index=4)
    free_since.see(first, 10.0)
    free_since.see(first, 12.0)  # the same free state read again
    assert free_since.of(first) == 10.0
    again = entry(value=b"host:2", lock_index=5)  # taken and invalidated once more
    free_since.see(again, 20.0)
    assert (free_since.of(again), free_since.of(first)) == (20.0, None)
    free_since.see(released(lock_index=6), 30.0)  # a release is not an invalidation: nothing to remember
    assert free_since.of(again) == 20.0


# -- a term's lock, as the key shows it ---------------------------------------------

@pytest.mark.parametrize("seen, reason", [
    (entry(session=OURS, value=b"me"), None),
    (entry(session=OTHER, value=b"me"), Reason.LOCK_LOST),
    (entry(value=b"me"), Reason.LOCK_LOST),
    (None, Reason.LOCK_LOST),
    (entry(session=OURS, value=b"someone"), Reason.KEY_OVERWRITTEN),
])
def test_why_a_term_no_longer_holds_its_lock(seen: Optional[KeyEntry], reason: Optional[Reason]) -> None:
    assert lock_check(seen, OURS, "me") is reason


@pytest.mark.parametrize("seen, own, result", [
    (entry(session=OTHER), OURS, True),
    (entry(session=OURS), OURS, False),     # ours while no term has it: taking it again leads it
    (entry(session=OURS), None, True),      # a session of ours that is gone
    (entry(), OURS, False),
    (None, OURS, False),
])
def test_whether_another_session_holds_the_key(seen: Optional[KeyEntry], own: Optional[str], result: bool) -> None:
    assert held_by_another(seen, own) is result


# -- what a step-down does next ------------------------------------------------

@pytest.mark.parametrize("reason, release, sits_out", [
    (Reason.RESIGNED, True, True),
    (Reason.TERM_LIMIT, True, True),
    (Reason.JOB_FINISHED, True, True),
    (Reason.STOPPED, True, True),
    (Reason.LEASE_EXPIRED, True, False),
    (Reason.KEY_OVERWRITTEN, True, False),
    (Reason.LOCK_LOST, False, False),
])
def test_what_follows_the_end_of_a_term(reason: Reason, release: bool, sits_out: bool) -> None:
    after = after_term(reason, lock_index=7, now=100.0, check_ttl=3.0)
    assert after.release is release
    assert after.sit_out == (SitOut(103.0, 7) if sits_out else None)


@pytest.mark.parametrize("seen, now, over", [
    (entry(lock_index=7), 101.0, False),      # our own release, inside the sit-out
    (entry(lock_index=7), 103.0, True),       # its time passed
    (entry(lock_index=8), 101.0, True),       # someone else took the lock since
    (None, 101.0, False),
])
def test_when_a_sit_out_is_over(seen: Optional[KeyEntry], now: float, over: bool) -> None:
    assert SitOut(103.0, 7).over(seen, now) is over


@pytest.mark.parametrize("now, refused_since, poll, retry", [
    (100.0, None, None, 103.0),      # the first refusal: one lock-delay later
    (101.0, 100.0, None, 103.0),     # refused again: still one lock-delay from the first, not from this one
    (100.0, None, 0.5, 100.5),       # polling: the lock-delay may have started long before the refusal
    (102.8, 100.0, 0.5, 103.0),      # ... never past its surest end
    (103.5, 100.0, 0.5, 104.0),      # refused past it (a longer lock-delay than known): keep polling
    (103.5, 100.0, None, 106.5),     # ... or wait another lock-delay
])
def test_a_refusal_for_a_lock_delay_is_retried_by_the_lock_delays_end_counted_from_the_first(
        now: float, refused_since: Optional[float], poll: Optional[float], retry: float) -> None:
    assert retry_after_lock_delay(now, DELAY, refused_since, poll) == pytest.approx(retry)


@pytest.mark.parametrize("attempt, follows", [
    (taken(8), True),                       # our next lock, right after our release
    (taken(9), False),                      # someone took and lost it in between
    (taken(8, create_index=11), False),     # re-created in between
])
def test_a_holders_own_release_is_a_free_key_its_next_lock_follows(attempt: LockAttempt, follows: bool) -> None:
    ours = released_entry("svc/leader", OURS, lock_index=7, create_index=10, modify_index=60)
    assert ours.free and released_by_holder(ours) and not invalidated(ours)
    assert attempt.follows(ours, OURS) is follows
    assert attempt.hold_off(ours, OURS, None, 100.0, DELAY)[0] == (0.0 if follows else DELAY)


@pytest.mark.parametrize("seen, result", [
    (released(), True),
    (entry(), False),                                          # someone else's ?release=, no value
    (entry(value=b"someone"), False),                          # ... with a value: taken for an invalidation
    (entry(session=OTHER, value=release_mark(OTHER)), False),  # held again
    (None, False),
])
def test_which_free_entries_the_holder_released_itself(seen: Optional[KeyEntry], result: bool) -> None:
    assert released_by_holder(seen) is result


# -- timings that differ between the holders of one key ---------------------------

@pytest.mark.parametrize("since_ms, lock_delay", [(1765000000000, 3.0), (1765000000123, 60.0), (1, 0.5)])
def test_a_holders_flags_carry_its_start_and_its_lock_delay(since_ms: int, lock_delay: float) -> None:
    flags = holder_flags(since_ms, lock_delay)
    held = KeyEntry(key="k", value=b"h", session=OTHER, flags=flags)
    assert (since_of(flags), holder_lock_delay(held)) == (since_ms, lock_delay)
    assert LeaderInfo.from_entry(held).since == since_ms / 1000


def test_flags_of_an_older_holder_name_no_lock_delay() -> None:
    assert holder_lock_delay(KeyEntry(flags=1765000000000)) is None
    assert holder_lock_delay(None) is None


@pytest.mark.parametrize("own, seen, hold", [(3.0, 0.0, 3.0), (3.0, 8.0, 8.0), (10.0, 1.0, 10.0)])
def test_an_unaccounted_lock_is_held_for_the_longest_lock_delay_seen(own: float, seen: float, hold: float) -> None:
    assert lock_delay_to_hold(own, seen) == hold


@pytest.mark.parametrize("seen, now, unclaimed", [
    (entry(lock_index=7), 103.0, True),                  # free all along: nobody in line took it
    (entry(lock_index=7), 101.0, False),                 # the sit-out still runs
    (entry(lock_index=8), 103.0, False),                 # someone took it (and let it go) meanwhile
    (entry(session=OTHER, lock_index=8), 103.0, False),  # someone holds it
    (None, 103.0, False),                                # not read: go by the line
])
def test_when_a_sit_out_leaves_the_key_unclaimed(seen: Optional[KeyEntry], now: float, unclaimed: bool) -> None:
    assert SitOut(103.0, 7).unclaimed(seen, now) is unclaimed


# -- what a participant has seen of a key -------------------------------------------

def test_a_key_view_tells_when_the_leader_changes() -> None:
    view = KeyView()
    assert view.observe(entry(session=OTHER, value=b"b"), 1.0) and view.leader == "b"
    assert not view.observe(entry(session=OTHER, value=b"b", modify_index=51), 2.0)   # the same leader again
    assert view.observe(entry(session="restarted", value=b"b"), 3.0)                 # same identity, new session
    assert view.observe(released(), 4.0) and view.leader is None
    assert not view.observe(None, 5.0)                                               # still nobody
    assert view.seen is None


def test_a_key_view_holds_a_lock_for_the_longest_lock_delay_its_holders_wrote() -> None:
    view = KeyView()
    view.observe(KeyEntry(session=OTHER, value=b"run", flags=holder_flags(1, 8.0)), 1.0)
    view.observe(KeyEntry(session="s2", value=b"lib", flags=holder_flags(2, 3.0)), 2.0)
    assert view.longest_delay == 8.0
    # Taken while another held it (unseen free): the longest lock-delay, not ours.
    assert view.hold_off(taken(5), entry(session=OTHER), OURS, 10.0, DELAY)[0] == 8.0


def test_a_key_view_counts_an_invalidated_key_from_when_it_first_saw_it_free() -> None:
    view = KeyView()
    free = entry(value=b"host:1", lock_index=4)
    view.observe(free, 10.0)
    view.observe(free, 11.5)
    assert view.hold_off(taken(5), free, OURS, 12.0, DELAY)[0] == pytest.approx(1.0)


def test_a_lock_right_after_our_own_last_term_waits_for_nobody_however_that_term_ended() -> None:
    view = KeyView()
    invalidated_ours = entry(lock_index=4, value=b"me")  # our session invalidated in an outage
    assert view.hold_off(taken(5), invalidated_ours, OURS, 100.0, DELAY)[0] == DELAY
    view.own_lock = (10, 4)  # set once that term's work returned
    assert view.hold_off(taken(5), invalidated_ours, OURS, 100.0, DELAY) == (0.0, "")
    # Last read while our old session still held it: the same lock, over.
    assert view.hold_off(taken(5), entry(session="old", lock_index=4, value=b"me"), OURS, 100.0, DELAY) == (0.0, "")
    # Someone else locked it in between (LockIndex 5), or it was re-created: wait as before.
    assert view.hold_off(taken(6), entry(lock_index=5, value=b"x"), OURS, 100.0, DELAY)[0] == DELAY
    assert view.hold_off(taken(5, create_index=11), invalidated_ours, OURS, 100.0, DELAY)[0] == DELAY


def test_a_release_mark_that_names_the_locks_index_counts_without_its_holder_seen() -> None:
    # A waiter second in line never saw a short term's holder; the mark names the lock it released.
    view = KeyView()
    view.observe(entry(session="earlier", lock_index=3), 1.0)
    marked = entry(lock_index=4, value=release_mark("b", 4))
    assert view.follows(taken(5), marked, OURS)
    # A mark of another lock (written back by a script) does not.
    assert not view.follows(taken(5), entry(lock_index=4, value=release_mark("z", 2)), OURS)
