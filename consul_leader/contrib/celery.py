"""Celery beat as a singleton: run ``celery beat`` on several hosts, and only
the leader sends due tasks.

::

    celery -A proj beat -S consul_leader.contrib.celery:LeaderScheduler

Settings, in the Celery app's configuration: ``consul_leader_key``
(required) and ``consul_leader_`` + any :class:`~consul_leader.Candidate`
argument (``address``, ``token``, ``datacenter``, ``verify``, ``cert``,
``ttl``, ``lock_delay``, ``lease``, ``heartbeat``, ``session_ttl``,
``term_limit``, ``timeout``, ``identity``); ``consul_leader_state_key``, where
the leader records what it sent (default: the key + ``".schedule"``).

The guarantee: **each run of an entry is sent at most once across all beat
processes**, and a standby that takes over continues the schedule where the
last leader left it, without a burst and without repeating the last run.

How: before sending, the leader records the run (the entry's new
``last_run_at``) in Consul, in a transaction that succeeds only while the lock
key still has the ModifyIndex it had when this term began (its fencing
token): a deposed leader's write fails and it sends nothing. A process that
takes over first reads that record and moves each entry's ``last_run_at`` to
it, so an entry the old leader sent is not due again until its next time.
Runs that fell due while nobody led (the failover time, about ``2*ttl`` after
a crash, milliseconds after a clean stop) are sent once, late, at the
takeover, as Celery does after any restart. A leader that dies between
recording a run and sending it loses that run: at most once, not exactly once.

Each message carries the headers ``consul_leader_fencing_token`` and
``consul_leader_run_at``, so a consumer can refuse a message of an older term
or a run it has seen.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Callable, Dict, Optional

from celery.beat import PersistentScheduler  # type: ignore[import-untyped]
from celery.utils.time import maybe_make_aware  # type: ignore[import-untyped]

from ..candidate import Candidate
from ..errors import ConsulLeaderError
from ._settings import candidate_from_settings, lowered

__all__ = ["LeaderScheduler", "LeaderSchedulerMixin", "candidate_from_conf"]

log = logging.getLogger("consul_leader")

_PREFIX = "consul_leader_"


def candidate_from_conf(app: Any) -> Candidate:
    """Build a (not yet started) candidate from ``app.conf.consul_leader_*``.

    :param app: the Celery app.
    :raises ConfigurationError: a setting is missing, unknown or invalid; the
        message names it."""
    # A Django project reads its Celery settings with a namespace
    # (config_from_object("django.conf:settings", namespace="CELERY")):
    # CELERY_CONSUL_LEADER_KEY there is consul_leader_key here.
    namespace = getattr(app, "namespace", None)
    strip = f"{namespace}_".lower() if namespace else None
    conf = {}
    for name in app.conf.keys():
        if not isinstance(name, str):
            continue
        option = name.lower()
        if strip and option.startswith(strip):
            option = option[len(strip):]
        if option.startswith(_PREFIX):
            conf[option] = app.conf.get(name)
    values = lowered(conf, _PREFIX)
    return candidate_from_settings(values, lambda option: _PREFIX + option, "the Celery app's conf",
                                   extra=("state_key",))


def fenced_write(candidate: Candidate, key: str, value: bytes, fencing_token: int) -> bool:
    """Write *key* only if *candidate*'s lock key still has the ModifyIndex
    *fencing_token*, i.e. the term that token names still holds the lock; one
    Consul transaction, so no later term can interleave.

    :returns: True if written; False if the term is over or Consul could not
        be asked (logged)."""
    try:
        if candidate.client.put_if_index(candidate.key, fencing_token, key, value):
            return True
        log.warning("not writing %r: the term with fencing token %d no longer holds %r",
                    key, fencing_token, candidate.key)
    except ConsulLeaderError as exc:
        log.warning("not writing %r: Consul could not tell whether the term with fencing "
                    "token %d still holds %r (%s)", key, fencing_token, candidate.key, exc)
    return False


class LeaderSchedulerMixin:
    """Makes a Celery beat scheduler send due tasks only while it leads.

    Put it first among the bases of a :class:`celery.beat.Scheduler`
    subclass, e.g. for django-celery-beat::

        class LeaderDatabaseScheduler(LeaderSchedulerMixin, DatabaseScheduler):
            pass

    The candidate is built from the app's conf on the first tick (so
    ``celery beat`` may build a scheduler just to describe it) and stopped,
    releasing the lock at once, when beat closes the scheduler.
    """

    #: The longest a standby sleeps before checking whether it was elected.
    standby_interval: float = 1.0

    app: Any
    max_interval: float
    schedule: Any
    _heap: Any

    _leader_candidate: Optional[Candidate] = None
    _leader_term: Optional[int] = None
    _leader_sent: Dict[str, Dict[str, Any]]
    _leader_reserved: Dict[str, Any]
    old_schedulers: Any
    sync: Callable[[], None]

    @property
    def candidate(self) -> Candidate:
        """This beat's candidate, built from the app's conf on first use."""
        if self._leader_candidate is None:
            self._leader_candidate = candidate_from_conf(self.app)
            self._leader_sent = {}
            self._leader_reserved = {}
        return self._leader_candidate

    @property
    def state_key(self) -> str:
        """The Consul key where the leader records the runs it sent."""
        return str(self.app.conf.get(_PREFIX + "state_key") or self.candidate.key + ".schedule")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One beat: as a standby, sleep briefly and check again; as the
        leader, take over the recorded schedule once per term, then run the
        scheduler's own tick."""
        candidate = self.candidate.start()
        token = candidate.fencing_token
        if token is None:
            if self._leader_term is not None:
                log.warning("beat %s no longer leads %r; standing by", candidate.identity,
                            candidate.key)
                self._leader_term = None
            return min(self.standby_interval, candidate.timing.heartbeat, self.max_interval)
        if token != self._leader_term and not self._take_over(token):
            return min(self.standby_interval, self.max_interval)
        return float(super().tick(*args, **kwargs))  # type: ignore[misc]

    def _take_over(self, token: int) -> bool:
        candidate = self.candidate
        try:
            _, entry = candidate.client.get_key(self.state_key)
        except ConsulLeaderError as exc:
            log.warning("beat cannot read the schedule state %r (%s); not sending until it can",
                        self.state_key, exc)
            return False
        recorded: Dict[str, Dict[str, Any]] = {}
        if entry is not None and entry.get("Value"):
            try:
                recorded = dict(json.loads(entry["Value"])["entries"])
            except (ValueError, KeyError, TypeError):
                log.error("the schedule state %r is not ours; starting from the local schedule",
                          self.state_key)
        moved = []
        for name, run in recorded.items():
            local = self.schedule.get(name)
            if local is None:
                continue
            last_run_at = maybe_make_aware(datetime.fromisoformat(run["last_run_at"]))
            # The record wins whether it is older or newer: every run any
            # leader sent was recorded first, so a newer local value is one
            # nobody sent (Celery gives a new entry last_run_at = now).
            if local.last_run_at is None or maybe_make_aware(local.last_run_at) != last_run_at:
                # Also into a django-celery-beat model, marked for saving: its
                # scheduler reloads entries from the database on any change,
                # which would otherwise bring the older value back.
                self._move(local, last_run_at, int(run.get("total_run_count") or 0))
                self.schedule[name] = local
                moved.append(name)
        if moved and hasattr(self, "_dirty"):
            self.sync()  # DatabaseScheduler: save the moved entries now
        # Rebuilt from the moved entries. An empty heap rather than None:
        # DatabaseScheduler consumes its "reloaded" flag only when it
        # compares schedules, which a None heap skips.
        self._heap = []
        self.old_schedulers = None
        self._leader_sent = recorded
        self._leader_term = token
        log.info("beat %s leads %r (fencing token %d); continued %d entries from the last "
                 "leader's record", candidate.identity, candidate.key, token, len(moved))
        return True

    def reserve(self, entry: Any) -> Any:
        """The scheduler's own reserve (the entry's next state, with the
        new ``last_run_at``), kept for :meth:`apply_entry`: not every
        scheduler stores it in ``schedule`` (django-celery-beat's
        DatabaseScheduler does not)."""
        new_entry = super().reserve(entry)  # type: ignore[misc]
        self._leader_reserved[entry.name] = new_entry
        # Celery's own Scheduler stores the next state in `schedule`;
        # DatabaseScheduler does not, and a heap rebuilt from `schedule`
        # (after any reload of the database) then sees the run it just sent
        # as due again.
        schedule = self.schedule
        if schedule.get(entry.name) is entry:
            schedule[entry.name] = new_entry
        return new_entry

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Record the run in Consul (fenced), then send it; send nothing if
        the record fails."""
        reserved = self._leader_reserved.pop(entry.name, None)  # tick() reserved it just before
        if reserved is None:
            reserved = self.schedule.get(entry.name, entry)
        if self._already_sent(entry, reserved):
            return
        headers = self._record(reserved)
        if headers is None:
            log.warning("beat did not send %s: this term could not record it", entry.name)
            return
        # A shallow copy that leaves the scheduler's entry alone. Not
        # copy.copy(): it rebuilds through __reduce__, which calls the
        # entry's constructor with the arguments of a plain ScheduleEntry
        # (django-celery-beat's ModelEntry takes a model instead).
        copied = object.__new__(type(entry))
        copied.__dict__.update(entry.__dict__)
        entry = copied
        entry.options = {**entry.options, "headers": {**(entry.options.get("headers") or {}), **headers}}
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]

    def _already_sent(self, entry: Any, reserved: Any) -> bool:
        """True (and the entry moved to the recorded run) if the record says
        this run was sent already: the entry was due only because its
        ``last_run_at`` is older than the last recorded run, e.g. after a
        scheduler reloaded its entries from a database that does not have
        the last run yet. django-celery-beat's DatabaseScheduler does that on
        any change to its tables and every 5 minutes."""
        run = self._leader_sent.get(entry.name)
        if run is None or entry.last_run_at is None:
            return False
        recorded = maybe_make_aware(datetime.fromisoformat(run["last_run_at"]))
        if maybe_make_aware(entry.last_run_at) >= recorded:
            return False
        if entry.schedule.is_due(recorded).is_due:
            return False  # due even counting from the recorded run: a new run
        self._move(reserved, recorded, int(run.get("total_run_count") or 0))
        log.info("beat did not send %s again: the run of %s was sent already", entry.name, recorded.isoformat())
        return True

    def _move(self, entry: Any, last_run_at: datetime, total_run_count: int) -> None:
        """Set *entry*'s last run (in memory, and where the scheduler keeps
        it: the model of a django-celery-beat entry, saved on its next sync)."""
        entry.last_run_at = last_run_at
        entry.total_run_count = max(total_run_count, entry.total_run_count or 0)
        model = getattr(entry, "model", None)
        if model is not None and hasattr(model, "last_run_at"):
            model.last_run_at = last_run_at
            model.total_run_count = entry.total_run_count
            dirty = getattr(self, "_dirty", None)
            if isinstance(dirty, set):
                dirty.add(entry.name)

    def _record(self, reserved: Any) -> Optional[Dict[str, Any]]:
        candidate = self.candidate
        token = self._leader_term
        if token is None or candidate.fencing_token != token:
            return None
        run_at = maybe_make_aware(reserved.last_run_at).isoformat()
        sent = {**self._leader_sent, reserved.name: {"last_run_at": run_at,
                                                     "total_run_count": reserved.total_run_count}}
        state = {"fencing_token": token, "identity": candidate.identity, "entries": sent}
        if not fenced_write(candidate, self.state_key, json.dumps(state).encode("utf-8"), token):
            return None
        self._leader_sent = sent
        return {"consul_leader_fencing_token": token, "consul_leader_run_at": run_at}

    def close(self) -> None:
        """Leave the election (releasing the lock, so a standby takes over
        at once), then close the scheduler."""
        if self._leader_candidate is not None:
            self._leader_candidate.stop()
        super().close()  # type: ignore[misc]

    @property
    def info(self) -> str:
        """What ``celery beat`` prints at start."""
        base = super().info  # type: ignore[misc]
        key = self.app.conf.get(_PREFIX + "key")
        return f"{base}\n    . leader -> consul key {key}" if base else f"    . leader -> consul key {key}"


class LeaderScheduler(LeaderSchedulerMixin, PersistentScheduler):  # type: ignore[misc]
    """Celery's default :class:`~celery.beat.PersistentScheduler` (the
    schedule in a local shelve file), sending only while it leads::

        celery -A proj beat -S consul_leader.contrib.celery:LeaderScheduler

    .. versionadded:: 0.1
    """
