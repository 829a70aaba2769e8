"""The roster's reads, without Consul: a roster that cannot be read holds
Consul's longest lock-delay (it was the only place that told another
candidate's longer one), and the folder's own key (``consul-leader/
participants/KEY/``, as the Consul UI's "create folder" writes it) is no
contender. The real-agent tests: tests/test_roster_unreadable_holds_consuls_longest_lock_delay.py
and tests/test_roster_ignores_a_folder_key_and_unlocked_notes.py."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

from consul_leader.decisions import KeyView, hold_with_roster
from consul_leader.lockdelay import LockAttempt
from consul_leader.roster import Contender, read_roster, roster_prefix

KEY = "svc/x"
PREFIX = roster_prefix(KEY)
OURS = "session-ours"
FIRST_LOCK = LockAttempt(modify_index=20, delayed=False, lock_index=1, create_index=20)


def own_entry() -> Contender:
    return Contender(identity="me", host="h", pid=1, since=1.0, lock_delay=3.0, session=OURS, leading=True,
                     has_led=True, entry=PREFIX + OURS, modify_index=20)


@pytest.mark.parametrize("contenders, at_least", [
    # The roster could not be read: it proves nothing, so nothing less than
    # Consul's largest lock-delay is known to cover whoever may still work.
    (None, 60.0),
    # Read, showing only ourselves: lead at once (the rule as meant).
    ([own_entry()], 0.0),
])
def test_a_first_lock_with_an_unreadable_roster_is_held_as_long_as_anyone_may_need(
        contenders: Optional[List[Contender]], at_least: float) -> None:
    hold, _ = hold_with_roster(KeyView(), FIRST_LOCK, None, OURS, 3.0, "as its first holder", contenders,
                               shared=False)
    assert hold >= at_least if at_least else hold == 0.0


@pytest.mark.parametrize("name, value", [("", None), ("", b""), ("README", b"see the runbook")])
def test_a_folder_key_or_a_note_with_no_session_is_not_a_contender_that_led(name: str, value: Any) -> None:
    raw: Dict[str, Any] = {"Key": PREFIX + name, "Value": value, "Session": None, "ModifyIndex": 5,
                           "LockIndex": 0, "CreateIndex": 5, "Flags": 0}
    contenders = read_roster({raw["Key"]: raw}, PREFIX, None)
    assert [c for c in contenders if c.has_led] == [], contenders
