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
  and reads it back :data:`SETTLE` later, to catch a ``consul lock`` that
  read the key free just before and acquires it after.
- ``run PREFIX/.lock`` shares ``consul lock PREFIX``'s own key: one key,
  one holder. It waits while ``consul lock`` holds it; once it has written
  its own flags there, ``consul lock PREFIX`` refuses to run.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from ..client import ConsulClient
from ..errors import ConsulLeaderError, PermissionDenied

__all__ = ["LOCK_FLAG_VALUE", "LOCK_KEY", "SEMAPHORE_FLAG_VALUE", "SETTLE", "ConsulLockConflict", "guard"]

log = logging.getLogger("consul_leader")

#: The flags ``consul lock`` writes on its lock (``api.LockFlagValue``).
LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
#: The flags of a ``consul lock -n N`` semaphore's ``.lock`` key (``api.SemaphoreFlagValue``).
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0
#: The key ``consul lock PREFIX`` locks, under its prefix (``api.DefaultSemaphoreKey``).
LOCK_KEY = ".lock"

#: Seconds between writing the note and reading it back (see :func:`guard`):
#: far more than the round trip between ``consul lock``'s read and its acquire.
SETTLE = 1.0

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


def guard(client: ConsulClient, key: str, settle: Callable[[float], object] = time.sleep) -> None:
    """Check that ``consul lock`` does not use *key*'s prefix, and make it
    refuse to from now on (see the module's description).

    :param settle: waits the given seconds (``time.sleep``, or a wait that a
        signal cuts short) after the note was first written.

    :raises ConsulLockConflict: ``consul lock`` holds the key it would share
        with *key*, or a semaphore of its own is there.
    :raises ConsulLeaderError: Consul could not be read."""
    if key.endswith("/" + LOCK_KEY):
        # consul lock's own key: one key, so Consul lets one holder at a time.
        return
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
            return  # our note, or something consul lock refuses as well
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
            return
        if written:
            log.info("consul-leader run: wrote %r, so that a consul lock %r refuses to run beside this process",
                     lock_key, key)
            # A consul lock that read the key free just before the note was
            # written acquires it a round trip later (Consul's acquire does
            # not look at flags) and keeps its session on it: look again
            # once that has had time to land.
            settle(SETTLE)
            _, entry = client.get_key(lock_key)
            if entry is not None and _held(entry):
                raise ConsulLockConflict(_refusal(key, key, entry))
            return
    raise ConsulLockConflict(f"KEY {key!r}: {lock_key} changed each of the three times this process read it, as "
                             f"if a consul lock on {key!r} were starting: check with consul kv get -detailed "
                             f"{lock_key}, then start again")
