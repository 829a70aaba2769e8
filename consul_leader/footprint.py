"""What consul-leader writes to an agent for each session, and how what a
crashed process left there is removed.

Each session's TTL check belongs to a service instance of its own (service
``consul-leader`` by default), never to the node: a critical node-level
check fails every service of the node in health queries and DNS, and a TTL
check stays critical for good once its process is gone. The instance is
registered with ``DeregisterCriticalServiceAfter``, so Consul reaps what a
crash leaves; :class:`Leftovers` removes the rest: the node-level
``consul-leader-*`` checks that version 0.1 registered (Consul never reaps
them), instances its reaper left behind, and instances the agent removed
but could not remove from the catalog (their token was deleted).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from .client import ConsulClient
from .errors import ConsulLeaderError, PermissionDenied

log = logging.getLogger("consul_leader")

#: The service name a candidate's instance is registered under by default.
DEFAULT_SERVICE = "consul-leader"
#: Consul's least ``DeregisterCriticalServiceAfter`` (it raises a smaller one).
DEFAULT_DEREGISTER_AFTER = 60.0
#: What the IDs of the instances and checks consul-leader writes start with
#: (and the node-level checks of 0.1 did).
ID_PREFIX = "consul-leader-"
#: How soon to look again after a removal, for what it left in the catalog.
_RELOOK = 5.0
#: Looks made that often at first, until the catalog shows the instance.
_EARLY_LOOKS = 6
#: Consul's limit on a ``Meta`` value.
_META_VALUE_MAX = 512


def library_version() -> str:
    """The installed consul-leader's version, as the instance's ``Meta`` shows it."""
    try:
        return importlib.metadata.version("consul-leader")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        return "unknown"


@dataclass(frozen=True)
class Instance:
    """The service instance (and its TTL check) of one session.

    :ivar id: the instance's ID, also its check's ID: ``consul-leader-`` and
        16 hex digits, unique per session.
    :ivar service: the service name.
    :ivar deregister_after: seconds after which Consul removes the instance
        once its check is critical.
    :ivar meta: the instance's ``Meta``: ``identity``, ``host``, ``pid``,
        ``version`` and the ``key`` (or an Elector's ``prefix``), each cut to
        Consul's 512 characters.
    """

    id: str
    service: str
    deregister_after: float
    meta: dict[str, str]

    @classmethod
    def new(cls, service: str = DEFAULT_SERVICE, deregister_after: float = DEFAULT_DEREGISTER_AFTER,
            meta: dict[str, str] | None = None) -> Instance:
        """A new instance for a session about to be created; *meta* adds to
        (or replaces) the host, pid and version this process fills in."""
        values = {"host": socket.gethostname(), "pid": str(os.getpid()), "version": library_version()}
        values.update(meta or {})
        return cls(id=f"{ID_PREFIX}{uuid.uuid4().hex[:16]}", service=service, deregister_after=deregister_after,
                   meta={name: value[:_META_VALUE_MAX] for name, value in values.items()})

    @property
    def check_id(self) -> str:
        """The ID of the instance's TTL check, which the session binds to."""
        return self.id


@dataclass(frozen=True)
class _Seen:
    check_id: str
    service_id: str
    # In the catalog only: the agent no longer has it.
    orphan: bool = False


class Leftovers:
    """Removes, from one agent, what crashed candidates left there and
    Consul does not remove itself, once it has been critical for longer than
    the reap window.

    Consul's agent API tells no check's age, so age is seen, not read:
    :meth:`look` notes every critical leftover, and a later :meth:`look`, at
    least *window* seconds on, removes those still critical and unchanged. A
    live candidate passes its check every few seconds, so one that is still
    critical a window later has no process behind it.

    :param client: the agent's client.
    :param service: the service name whose critical instances count as left.
    :param window: how long a leftover must have been seen critical.
    """

    def __init__(self, client: ConsulClient, service: str, window: float) -> None:
        self.client = client
        self.service = service
        self.window = window
        self._seen: dict[_Seen, float] = {}
        self._looks = 0
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def look(self, now: float, own: str) -> float | None:
        """List the agent's checks and this service's instances, remove the
        leftovers seen since at least a window before *now* and the orphans
        in the catalog, and note the new ones. *own* is the calling
        session's instance (and check), never a leftover; the catalog's copy
        of it tells this agent's node.

        :returns: seconds until the next look is due, or None when nothing
            waits."""
        self._looks += 1
        try:
            checks = self.client.agent_checks()
            critical = {self._key(check) for check_id, check in checks.items()
                        if check_id != own and self._is_left(check)}
            siblings = any(check_id != own and check_id.startswith(ID_PREFIX) for check_id in checks)
            orphans = self._orphans(own)
        except ConsulLeaderError as exc:
            log.debug("could not list the agent's checks for leftovers: %s", exc)
            return self.window
        with self._lock:
            self._seen = {seen: at for seen, at in self._seen.items() if seen in critical}
            due = [seen for seen, at in self._seen.items() if now - at >= self.window]
            for seen in critical:
                self._seen.setdefault(seen, now)
            waiting = bool(self._seen)
        # An instance the agent no longer has is no live candidate's: it
        # goes at once.
        removed = [seen for seen in due + sorted(orphans or (), key=str) if self._remove(seen)]
        with self._lock:
            for seen in removed:
                self._seen.pop(seen, None)
            waiting = bool(self._seen)
        if removed:
            # A removal made with the agent's copy of a deleted token leaves
            # the catalog's: look again soon for that orphan.
            return _RELOOK
        log.debug("looked for leftovers: %d waiting for the reap window, %s", len(self._seen),
                  "this instance not in the catalog (yet)" if orphans is None else f"{len(orphans)} catalog orphans")
        if orphans is None and self._looks <= _EARLY_LOOKS:
            # The catalog does not show this instance yet (the agent syncs
            # it in the background; a token without node:read never sees
            # it): look again soon, a few times.
            return _RELOOK
        if waiting:
            # When the agent's reaper removes a leftover with its deleted
            # token, the catalog keeps an orphan: see it soon after.
            return self.window / 4
        # Another candidate on this agent may crash yet, and what it leaves
        # Consul does not always remove: look once a window while there is one.
        return self.window if siblings else None

    def _is_left(self, check: dict[str, object]) -> bool:
        if check.get("Status") != "critical" or not str(check.get("CheckID", "")).startswith(ID_PREFIX):
            return False
        # A node-level check of 0.1, or an instance of ours Consul did not reap.
        return not check.get("ServiceID") or check.get("ServiceName") == self.service

    def _orphans(self, own: str) -> set[_Seen] | None:
        """Instances of this agent's node in the catalog that the agent no
        longer has: its anti-entropy could not delete them (their token was
        deleted), and it will not try again. None when the catalog does not
        show *own* yet (so this agent's node is not known)."""
        catalog = self.client.catalog_instances(self.service)
        node = next((entry.get("Node") for entry in catalog if entry.get("ServiceID") == own), None)
        if node is None:
            return None
        local = self.client.agent_services()
        return {_Seen(str(entry["ServiceID"]), str(entry["ServiceID"]), orphan=True) for entry in catalog
                if entry.get("Node") == node and str(entry.get("ServiceID", "")).startswith(ID_PREFIX)
                and entry["ServiceID"] != own and entry["ServiceID"] not in local}

    @staticmethod
    def _key(check: dict[str, object]) -> _Seen:
        # Not its output: a new TTL check's goes from "" to "TTL expired"
        # without anyone behind it; a live one's check turns passing.
        return _Seen(str(check["CheckID"]), str(check.get("ServiceID") or ""))

    def _remove(self, seen: _Seen) -> bool:
        try:
            if seen.orphan:
                # The agent deletes a catalog entry only for an instance it
                # has: register it again (with this token), then remove it.
                self.client.register_service(seen.service_id, self.service, seen.check_id, 0, deregister_after=0)
                self.client.deregister_service(seen.service_id, self.service)
            elif seen.service_id:
                self.client.deregister_service(seen.service_id, self.service)
            else:
                self.client.deregister_check(seen.check_id)
        except PermissionDenied as exc:
            if seen.check_id not in self._warned:
                self._warned.add(seen.check_id)
                what = (f"service instance {seen.service_id!r}" if seen.service_id else
                        f"node-level check {seen.check_id!r} (registered by consul-leader 0.1)")
                log.warning("cannot remove the %s that a crashed candidate left critical on this agent: the "
                            "token's policy needs %s. Until it is removed, it %s.", what, exc.rule,
                            "stays in the catalog" if seen.service_id else
                            "fails every service of this node in health queries and DNS")
            return False
        except ConsulLeaderError as exc:
            log.debug("could not remove leftover %s: %s", seen.check_id, exc)
            return False
        log.info("removed the %s %s that a crashed candidate left critical on this agent",
                 "service instance" if seen.service_id else "node-level check", seen.check_id)
        return True
