"""The line of candidates waiting for one lock.

Without it every waiter watches the lock key, so a release wakes all of
them at once and each sends a write that all but one lose: with a hundred
waiters, a hundred processes wake and a hundred Raft writes follow. In the
line, as in ZooKeeper's lock recipe, only the first waiter watches the lock;
each of the others watches the waiter before it, and wakes only when that
one leaves the line (it took the lock, stopped, or its session died).

The line lives next to the lock: ``<key>/.waiting/<session ID>``, one entry
per waiting candidate, locked by its session so that a dead candidate's
entry shows no session and is skipped. Order is the entries' CreateIndex.
The line decides only who tries first; the lock itself is taken exactly as
without it, so a broken line costs time, never safety.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .client import ConsulClient
from .entry import KeyEntry
from .errors import ConsulLeaderError, PermissionDenied

__all__ = ["WaitingLine", "line_prefix"]

log = logging.getLogger("consul_leader")


def line_prefix(key: str) -> str:
    """The folder under which the candidates waiting for *key* stand in line."""
    return f"{key}/.waiting/"


class WaitingLine:
    """One candidate's place in the line for *key*.

    :param client: the Consul client.
    :param key: the lock key.
    :param identity: written into this candidate's entry (for people who look).
    """

    def __init__(self, client: ConsulClient, key: str, identity: str) -> None:
        self.client = client
        self.key = key
        self.prefix = line_prefix(key)
        self.identity = identity
        #: The key of this candidate's entry while it stands in line.
        self.entry: str | None = None
        #: False once the agent refused the line (the candidate then watches
        #: the lock, as every waiter did before there was a line).
        self.enabled = True

    def join(self, session_id: str) -> bool:
        """Take a place at the end of the line (once per session); False if
        the line cannot be used."""
        entry = self.prefix + session_id
        if self.entry == entry:
            return True
        if self.entry is not None:
            self.leave()  # an entry of a session that is gone
        try:
            joined = self.client.put_locked(entry, self.identity.encode("utf-8"), session_id)
        except PermissionDenied as exc:
            self._disable(exc)
            return False
        if not joined:
            # Only another session holding our session's entry could cause
            # this: stay out of the line this time and watch the lock.
            return False
        self.entry = entry
        return True

    def left(self) -> None:
        """Forget the entry: it was deleted with the lock's acquisition."""
        self.entry = None

    def leave(self) -> None:
        """Leave the line (stopping, or the session replaced). Errors are
        logged: a left-over entry loses its session with it and is then
        removed by whoever finds it."""
        entry, self.entry = self.entry, None
        if entry is None:
            return
        try:
            self.client.delete_key(entry)
        except ConsulLeaderError as exc:
            log.debug("could not leave the line at %r: %s", entry, exc)

    def wait_turn(self, session_id: str, done: Callable[[], bool], look: Callable[[], bool],
                  wait: float, patience: float) -> None:
        """Return once this candidate is the first live waiter, the line
        cannot be used, or *done()* says to stop waiting. Blocks on the
        waiter before it, never on the lock, at most *wait* seconds at a
        time; *look()* is called after each such wait (the candidate reads
        the lock there, so that its ``leader()`` is at most *wait* old) and
        says whether the lock is free. Free for *patience* seconds with the
        waiters ahead still in line (one that cannot take it: cut off from
        the servers, or refused a key locked with it), this one returns to
        try itself: the line orders the tries, it must not stop them.

        :raises ConsulLeaderError: Consul could not be asked (the caller retries)."""
        if not self.join(session_id):
            return
        ahead: KeyEntry | None = None
        free_since: float | None = None
        while self.enabled and not done():
            if ahead is None:
                try:
                    _, raw = self.client.get_prefix(self.prefix)
                except PermissionDenied as exc:
                    self._disable(exc)
                    return
                entries = {key: KeyEntry.parse(one) for key, one in raw.items()}
                mine = entries.get(self.entry or "")
                if mine is None or mine.session != session_id:
                    self.entry = None  # deleted under us (by an operator): to the end of the line again
                    if not self.join(session_id):
                        return
                    continue
                self._sweep(entries)
                ahead = _ahead_of(mine, entries)
                if ahead is None:
                    return
            _, now = self.client.get_key(ahead.key, index=ahead.modify_index,
                                         wait=wait if free_since is None else patience)
            if not look():
                free_since = None
            elif free_since is None:
                free_since = time.monotonic()
            elif time.monotonic() - free_since >= patience:
                log.info("%r has been free for %.1fs and the waiters ahead of %s did not take it: trying",
                         self.key, time.monotonic() - free_since, self.identity)
                return
            if now is None or KeyEntry.parse(now).modify_index != ahead.modify_index:
                ahead = None  # it left, or its session ended: list the line again
            # else the wait ran out with the waiter before us unchanged: it
            # is still the one to wait on (newcomers join behind us), so
            # the line need not be listed again; a wait costs two requests.

    def _disable(self, exc: PermissionDenied) -> None:
        if self.enabled:
            self.enabled = False
            self.entry = None
            log.warning("the ACL token may not write the waiting line under %r, so every waiting candidate "
                        "watches the lock itself (a release wakes all of them); allow key_prefix write on "
                        "the key to use the line: %s", self.prefix, exc)

    def _sweep(self, entries: dict[str, KeyEntry]) -> None:
        # Entries of candidates that died or stopped without leaving: their
        # session is gone. Whoever sees one removes it, with a check-and-set
        # so that a concurrent change wins, to keep the folder from growing.
        for key, entry in entries.items():
            if entry.free:
                try:
                    self.client.delete_key_if_index(key, entry.modify_index)
                except ConsulLeaderError as exc:
                    log.debug("could not remove the stale line entry %r: %s", key, exc)


def _ahead_of(mine: KeyEntry, entries: dict[str, KeyEntry]) -> KeyEntry | None:
    """The live waiter just before *mine*, or None if *mine* is first."""
    created = _created(mine)
    before = [e for e in entries.values() if not e.free and _created(e) < created]
    return max(before, key=_created) if before else None


def _created(entry: KeyEntry) -> int:
    return entry.create_index
