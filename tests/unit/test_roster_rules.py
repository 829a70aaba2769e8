"""The roster's rules, without Consul: what a listing of a key's roster
proves about who may still be doing the key's work."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Optional

import pytest

from consul_leader.decisions import KeyView, hold_with_roster
from consul_leader.entry import KeyEntry
from consul_leader.lockdelay import LockAttempt, release_mark
from consul_leader.roster import Contender, hold_for_others, nobody_else, read_roster, roster_prefix

KEY = "svc/x"
PREFIX = roster_prefix(KEY)
OURS = "session-ours"


def raw(session_name: str, *, held: bool = True, lock_delay: Optional[float] = 3.0, identity: str = "a",
        value: Optional[bytes] = None, modify_index: int = 7, under: str = PREFIX, led: bool = True) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"identity": identity, "host": "h", "pid": 12, "since": 1700000000.5, "led": led}
    if lock_delay is not None:
        fields["lock_delay"] = lock_delay
    return {"Key": under + session_name, "Value": json.dumps(fields).encode() if value is None else value,
            "Session": session_name if held else None, "ModifyIndex": modify_index, "LockIndex": 1,
            "CreateIndex": 3, "Flags": 0}


def listing(*entries: Dict[str, Any]) -> Dict[str, Any]:
    return {one["Key"]: one for one in entries}


def test_the_roster_folder_is_the_key_with_its_slashes_trimmed() -> None:
    assert roster_prefix("svc/x") == roster_prefix("/svc/x/") == "consul-leader/participants/svc/x/"


def test_an_entry_tells_who_takes_part_and_whether_it_leads_and_lives() -> None:
    (one,) = read_roster(listing(raw("s1", identity="web-1", lock_delay=8.0)), PREFIX, holder="s1")
    assert (one.identity, one.host, one.pid, one.since, one.lock_delay) == ("web-1", "h", 12, 1700000000.5, 8.0)
    assert one.leading and one.alive and one.session == "s1" and one.entry == PREFIX + "s1"
    (left,) = read_roster(listing(raw("s1", held=False)), PREFIX, holder=None)
    assert not left.leading and not left.alive and left.session is None


def test_the_rosters_of_keys_below_share_the_folder_but_do_not_count() -> None:
    listed = read_roster(listing(raw(OURS), raw("s2", under=roster_prefix(KEY + "/deeper"))), PREFIX, None)
    assert [c.session for c in listed] == [OURS]
    assert nobody_else(listed, OURS)


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b"", base64.b64encode(b"x")])
def test_a_locked_entry_not_written_by_a_candidate_is_taken_to_need_consuls_longest_lock_delay(value: bytes) -> None:
    (one,) = read_roster(listing(raw("s2", value=value)), PREFIX, None)
    assert one.lock_delay == 60.0 and one.identity == ""
    assert hold_for_others([one], OURS, own=3.0) == 60.0


@pytest.mark.parametrize("entries, proves", [
    ((raw(OURS),), True),
    ((), False),  # our own entry missing: the token may not read it, or we are not on it
    ((raw(OURS, held=False),), False),  # ours, but our session does not hold it
    ((raw(OURS), raw("s2")), False),  # another live candidate
    ((raw(OURS), raw("s2", held=False)), False),  # one that crashed: its work may still run
    ((raw(OURS, led=False), raw("s2", led=False), raw("s3", held=False, led=False)), True),  # started together
    ((raw(OURS), raw("s2", value=b"?")), False),  # not a candidate's entry: it may have led
])
def test_only_a_roster_with_our_own_entry_and_no_other_proves_nobody_else_works(
        entries: tuple, proves: bool) -> None:
    assert nobody_else(read_roster(listing(*entries), PREFIX, None), OURS) is proves


def test_an_unread_roster_proves_nothing_and_holds_the_longest_lock_delay_consul_allows() -> None:
    # The roster was the only place that told another candidate's lock-delay.
    assert not nobody_else(None, OURS)
    assert hold_for_others(None, OURS, own=3.0) == 60.0


def test_the_hold_is_the_longest_lock_delay_of_every_other_candidate_live_or_left() -> None:
    listed = read_roster(listing(raw(OURS, lock_delay=30.0), raw("s2", lock_delay=8.0),
                                 raw("s3", held=False, lock_delay=5.0)), PREFIX, None)
    assert hold_for_others(listed, OURS, own=3.0) == 8.0  # our own entry's figure is not another's need
    assert hold_for_others(listed, OURS, own=10.0) == 10.0
    never_led = read_roster(listing(raw(OURS), raw("s2", lock_delay=8.0, led=False)), PREFIX, None)
    assert hold_for_others(never_led, OURS, own=3.0) == 3.0  # it never took the lock: no work of its own to wait for


def test_contenders_are_listed_in_the_order_they_joined() -> None:
    early, late = raw("s2"), raw("s1")
    early_value = json.loads(early["Value"])
    late_value = json.loads(late["Value"])
    early_value["since"], late_value["since"] = 1.0, 2.0
    early["Value"], late["Value"] = json.dumps(early_value).encode(), json.dumps(late_value).encode()
    assert [c.session for c in read_roster(listing(late, early), PREFIX, None)] == ["s2", "s1"]
    assert isinstance(read_roster(listing(late), PREFIX, None)[0], Contender)


# -- a lock no lock-delay of Consul's covered, with the roster ----------------

def _seen(value: bytes = b"", lock_index: int = 4, session: Optional[str] = None) -> KeyEntry:
    return KeyEntry(key=KEY, value=value, session=session, lock_index=lock_index, modify_index=50, create_index=10)


def _taken(lock_index: int) -> LockAttempt:
    return LockAttempt(99, delayed=False, lock_index=lock_index, create_index=10)


ALONE = (raw(OURS),)
LED_AND_ALIVE = (raw(OURS), raw("s2", lock_delay=8.0))
LEFT_BY_A_CRASH = (raw(OURS), raw("s2", held=False, lock_delay=8.0))


@pytest.mark.parametrize("seen, attempt, roster, shared, hold", [
    (_seen(lock_index=0), _taken(1), ALONE, False, 0.0),                      # a new key
    (_seen(lock_index=0), _taken(1), LED_AND_ALIVE, False, 8.0),              # deleted under a live leader
    (_seen(lock_index=0), _taken(1), LEFT_BY_A_CRASH, False, 8.0),            # ... under one that crashed
    (_seen(lock_index=0), _taken(1), None, False, 60.0),                      # the roster unread
    (_seen(lock_index=0), _taken(1), ALONE, True, 3.0),                       # consul lock's key
    (_seen(), _taken(5), ALONE, False, 3.0),                                  # released by someone else
    (_seen(), _taken(5), LED_AND_ALIVE, False, 8.0),                          # ... beside a longer lock-delay
    (_seen(release_mark("z")), _taken(5), ALONE, False, 0.0),                 # a mark of a holder gone
    (_seen(release_mark("z")), _taken(5), LED_AND_ALIVE, False, 8.0),         # ... or forged while it works
    (_seen(release_mark(OURS)), _taken(5), LED_AND_ALIVE, False, 0.0),        # our own release: it follows
], ids=["new-key", "deleted-live", "deleted-crashed", "unread", "consul-lock-key", "released-by-another",
        "released-by-another-longer", "unseen-mark", "unseen-mark-leader-alive", "own-mark"])
def test_what_the_roster_makes_of_a_lock_no_lock_delay_covered(
        seen: KeyEntry, attempt: LockAttempt, roster: Optional[tuple], shared: bool, hold: float) -> None:
    view = KeyView()
    before, why = view.hold_off(attempt, seen, OURS, 100.0, 3.0)
    contenders = None if roster is None else read_roster(listing(*roster), PREFIX, None)
    held, _ = hold_with_roster(view, attempt, seen, OURS, before, why, contenders, shared)
    assert held == hold


def test_a_holder_seen_that_is_not_on_the_roster_makes_a_first_lock_wait() -> None:
    view = KeyView()
    view.observe(_seen(b"old", session="foreign"), 1.0)  # another tool's session, or 0.1's
    roster = read_roster(listing(raw(OURS)), PREFIX, None)
    hold, why = view.hold_off(_taken(1), _seen(lock_index=0), OURS, 100.0, 3.0)
    assert hold_with_roster(view, _taken(1), _seen(lock_index=0), OURS, hold, why, roster, False)[0] == 3.0
    # One on the roster (a crash left its entry free) is known: its lock-delay is held.
    roster = read_roster(listing(raw(OURS), raw("foreign", held=False, lock_delay=5.0)), PREFIX, None)
    assert hold_with_roster(view, _taken(1), _seen(lock_index=0), OURS, hold, why, roster, False)[0] == 5.0


def test_the_folders_own_key_and_notes_nobody_locked_are_not_contenders() -> None:
    folder = {"Key": PREFIX, "Value": None, "Session": None, "ModifyIndex": 3}  # the UI's "create folder"
    note = raw("README", held=False, value=b"these entries are consul-leader's")
    listed = read_roster(listing(folder, note, raw(OURS)), PREFIX, None)
    assert [c.session for c in listed] == [OURS]
    assert nobody_else(listed, OURS)
