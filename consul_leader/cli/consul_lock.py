"""``consul lock`` beside ``consul-leader run``, for a fleet moving over one
host at a time: neither may lead beside the other.

``consul lock PREFIX`` locks the key ``PREFIX/.lock``, written with its
flag value (Consul's ``api.LockFlagValue``; a semaphore, ``-n`` above 1,
writes ``api.SemaphoreFlagValue`` there instead), and refuses to run on a
``.lock`` key with any other flags ("Existing key does not match lock
use"). ``run KEY`` uses that rule:

- It refuses to start while ``KEY/.lock`` is ``consul lock``'s (held, or a
  semaphore's), so that ``consul lock KEY`` and ``consul-leader run KEY``
  never both lead (they would lock two different keys).
- Otherwise it writes ``KEY/.lock`` with flags 0 and a note before it runs
  for election, so that a ``consul lock KEY`` started later refuses to run,
  and locks ``KEY/.lock`` in the same transaction as each lock on ``KEY``
  (:meth:`Candidate.lock_with <consul_leader.Candidate.lock_with>`): a
  ``consul lock`` that read the key free before the note was written, and
  whose acquisition is still on its way (a slow link, a paused VM), can
  then never lead beside a term of ``run``: while ``run`` leads, its
  session holds ``KEY/.lock``; once ``consul lock`` holds it, ``run``
  cannot take its lock.
- ``run PREFIX/.lock`` shares ``consul lock PREFIX``'s own key: one key,
  one holder. It waits while ``consul lock`` holds it; once it has written
  its own flags there, ``consul lock PREFIX`` refuses to run.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..client import ConsulClient
from ..errors import ConsulLeaderError, PermissionDenied

__all__ = ["LOCK_FLAG_VALUE", "LOCK_KEY", "SEMAPHORE_FLAG_VALUE", "ConsulLockConflict", "guard", "taken_by_consul_lock"]

log = logging.getLogger("consul_leader")

#: The flags ``consul lock`` writes on its lock (``api.LockFlagValue``).
LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
#: The flags of a ``consul lock -n N`` semaphore's ``.lock`` key (``api.SemaphoreFlagValue``).
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0
#: The key ``consul lock PREFIX`` locks, under its prefix (``api.DefaultSemaphoreKey``).
LOCK_KEY = ".lock"

_NOTE = ("consul-leader run elects the leader of {key}; consul lock {key} would lead beside it, so this key, "
         "with flags that are not consul lock's, makes consul lock refuse to run there. Delete it only once no "
         "consul-leader run uses {key}.")


class ConsulLockConflict(ConsulLeaderError):
    """``run``'s key is ``consul lock``'s: the message says what to do."""


# The two fields read here, in one place: Consul's names for them.
def _flags(entry: Any) -> int:
    return int(entry.get("Flags") or 0)


def _held(entry: Any) -> bool:
    return bool(entry.get("Session"))


def _modify_index(entry: Any) -> int:
    return int(entry["ModifyIndex"])


def _is_consul_lock(entry: Optional[Any]) -> bool:
    return entry is not None and _flags(entry) in (LOCK_FLAG_VALUE, SEMAPHORE_FLAG_VALUE)


def _refusal(key: str, prefix: str, entry: Any) -> str:
    semaphore = _flags(entry) == SEMAPHORE_FLAG_VALUE
    what = f"a consul lock -n semaphore on {prefix!r}" if semaphore else f"consul lock {prefix!r}"
    return (f"KEY {key!r}: {prefix}/{LOCK_KEY} is in use by {what}, which would lead beside this process (they lock "
            f"different keys). Stop every consul lock on {prefix!r} first; once none runs, delete what it left "
            f"(consul kv delete {prefix}/{LOCK_KEY}) and start consul-leader run again. To move a fleet one host "
            f"at a time instead, give run consul lock's own key, {prefix}/{LOCK_KEY}: the two then share one lock. "
            "See 'Moving from consul lock' in the docs.")


def guard(client: ConsulClient, key: str) -> Optional[tuple[str, bytes]]:
    """Check that ``consul lock`` does not use *key*'s prefix, and make it
    refuse to from now on (see the module's description).

    :returns: the key to lock with each lock on *key*, and the value to
        write there; None when there is none (*key* is ``consul lock``'s
        own, or the token may not write the other).
    :raises ConsulLockConflict: ``consul lock`` holds the key it would share
        with *key*, or a semaphore of its own is there.
    :raises ConsulLeaderError: Consul could not be read."""
    if key.endswith("/" + LOCK_KEY):
        # consul lock's own key: one key, so Consul lets one holder at a time.
        return None
    lock_key = f"{key}/{LOCK_KEY}"
    for _ in range(3):
        _, entry = client.get_key(lock_key)
        if _is_consul_lock(entry):
            if _held(entry) or _flags(entry) == SEMAPHORE_FLAG_VALUE:
                raise ConsulLockConflict(_refusal(key, key, entry))
            # Free, left by a consul lock that ended: take it over, so that
            # its waiters (if any) refuse to go on.
            index = _modify_index(entry)
        elif entry is not None:
            # Our note, or something consul lock refuses as well.
            return lock_key, entry.get("Value") or _NOTE.format(key=key).encode("utf-8")
        else:
            index = 0
        note = _NOTE.format(key=key).encode("utf-8")
        try:
            if index:
                written = client.put_if_index(lock_key, index, lock_key, note)
            else:
                client.put_key(lock_key, note)
                written = True
        except PermissionDenied as exc:
            log.warning("consul-leader run: cannot write %r (%s): a consul lock %r started later would not see "
                        "this process and could lead beside it", lock_key, exc, key)
            return None
        if written:
            log.info("consul-leader run: wrote %r, so that a consul lock %r refuses to run beside this process",
                     lock_key, key)
            return lock_key, note
    raise ConsulLockConflict(f"KEY {key!r}: {lock_key} changed each of the three times this process read it, as "
                             f"if a consul lock on {key!r} were starting: check with consul kv get -detailed "
                             f"{lock_key}, then start again")


def taken_by_consul_lock(client: ConsulClient, key: str) -> Optional[str]:
    """Why ``run`` must leave, if ``consul lock`` took the key that *key*'s
    locks are taken with (see :func:`guard`) after ``run`` started: its
    acquisition was on its way as the note was written. None otherwise."""
    _, entry = client.get_key(f"{key}/{LOCK_KEY}")
    if _is_consul_lock(entry) and _held(entry):
        return _refusal(key, key, entry)
    return None
