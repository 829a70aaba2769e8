"""Bugs found in the election's decisions since 0.1, kept as named
mutations: each puts one back (a patch of the decision the simulated
processes call, or a switch of the simulated driver), so that a run can
show how soon the simulator catches it (``python -m
consul_leader.testing.sim --mutation NAME``).

A mutation patches module attributes for as long as it is applied, where
the code that uses them looks them up (``lockdelay.released_by_holder``
for ``LockAttempt.follows``, ``decisions.lock_delay_to_hold`` for
``KeyView.hold_off``, ``decisions.released_entry`` for the simulated
driver), so the simulated processes see the patch; the threaded drivers
import the names they call and do not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ... import decisions, lockdelay
from ...entry import KeyEntry
from .candidate import SimCandidate

__all__ = ["MUTATIONS", "mutated"]


def _patch(owner: Any, name: str, value: Any) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def apply() -> Iterator[None]:
        old = getattr(owner, name)
        setattr(owner, name, value)
        try:
            yield
        finally:
            setattr(owner, name, old)

    return apply


_hold_off = lockdelay.LockAttempt.hold_off


def _lead_first_lock_at_once(self: lockdelay.LockAttempt, seen: KeyEntry | None, session_id: str,
                             seen_free_at: float | None, now: float, lock_delay: float,
                             last_holder: str | None = None) -> tuple[float, str]:
    if self.lock_index == 1:
        return 0.0, ""
    return _hold_off(self, seen, session_id, seen_free_at, now, lock_delay, last_holder)


def _lead_at_once(self: lockdelay.LockAttempt, seen: KeyEntry | None, session_id: str,
                  seen_free_at: float | None, now: float, lock_delay: float,
                  last_holder: str | None = None) -> tuple[float, str]:
    return 0.0, ""


def _any_release_is_the_holders(entry: KeyEntry | None, holders: tuple[str | None, ...] | None = None) -> bool:
    return entry is not None and entry.free


def _no_own_release_seen(key: str, session_id: str, lock_index: int, create_index: int,
                         modify_index: int) -> KeyEntry | None:
    return None


#: name -> (what it puts back, how to apply it)
MUTATIONS: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "next job before the last returned": (
        "a term's end releases the lock without waiting for its job to return",
        _patch(SimCandidate, "JOIN_JOB", False)),
    "lapsed lease revived": (
        "a late heartbeat extends a lease that had run out (no lapse latch)",
        _patch(SimCandidate, "LAPSE_LATCH", False)),
    "lock not seen released led at once": (
        "every lock is led at once, however it was taken (no hold-off: Consul's lock-delay checked before "
        "commit, a key deleted under its holder, a release by another)",
        _patch(lockdelay.LockAttempt, "hold_off", _lead_at_once)),
    "first holder of a key leads at once": (
        "a lock with LockIndex 1 (a new or re-created key) is led at once",
        _patch(lockdelay.LockAttempt, "hold_off", _lead_first_lock_at_once)),
    "release by another taken as the holder's": (
        "any free entry counts as its holder's own release",
        _patch(lockdelay, "released_by_holder", _any_release_is_the_holders)),
    "deposed candidate retakes from a stale read": (
        "a holder's own release is not taken as seen, so its next lock follows a read older than its term",
        _patch(decisions, "released_entry", _no_own_release_seen)),
    "mixed lock-delays": (
        "a lock no lock-delay covered is held for the candidate's own lock-delay, not the longest seen",
        _patch(decisions, "lock_delay_to_hold", lambda own, longest: own)),
}


@contextlib.contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Apply the mutation *name* (None: none) while the block runs.

    :raises KeyError: no mutation of that name."""
    if name is None:
        yield
        return
    with MUTATIONS[name][1]():
        yield
