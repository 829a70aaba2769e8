"""A model of Consul as the election meets it: sessions, checks, the KV
store's locks, lock-delays, blocking queries, Raft leader changes.

Pure Python on a virtual clock: every change happens at the time of a
:class:`Timers` the model is given, and every rule below is pinned by a
conformance test that runs the same script against this model and a real
agent (``tests/sim/test_conformance.py``).

What it models, with Consul's own behaviour (1.8):

* A **KV entry** has ``LockIndex``, ``ModifyIndex``, ``CreateIndex``,
  ``Session``, ``Flags`` and ``Value``. Every committed write takes the next
  Raft index; a refused one changes no entry.
* **Lock** (``?acquire=``, the transaction's ``lock`` verb): refused while
  another session holds the key; by the same session, it rewrites value and
  flags without counting a new lock; else ``LockIndex`` grows by one (1 for a
  new key). **Unlock** (``?release=``, ``unlock``): only by the holding
  session; the value and flags become those of the request (an empty body
  empties the value). A **plain write** keeps the holder's session and sets
  ``LockIndex`` to 0. **Delete** frees the lock with no lock-delay.
* A **session** is bound to checks (``serfHealth``, the node's liveness, and
  TTL checks of its agent) and has a TTL (Consul reaps it at up to twice
  that). When a check goes critical, the TTL runs out, the session is
  destroyed or its node fails, it is **invalidated**: every key it holds
  loses its session (keeping value and flags, ``LockIndex`` unchanged) and
  each server, as it applies that, remembers a **lock-delay** on the key.
* The lock-delay is checked by the Raft leader **before** an acquisition is
  committed (:meth:`ConsulModel.precheck`), from the leader's own memory; an
  acquisition that passed the check and is applied after an invalidation
  wins with no lock-delay, and a new Raft leader that had not applied the
  invalidation (or was restored from a snapshot) enforces none.
* **Blocking queries** return once the key's index passes the given one, or
  after the wait plus up to a sixteenth of it.
* Without a Raft leader, what needs one is refused (``500 No cluster leader``).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ...entry import KeyEntry

__all__ = ["SERF_HEALTH", "ConsulModel", "ManualTimers", "ModelError", "NoClusterLeader", "Timers", "TxnOp"]

#: The check every node has: its agent's liveness, as the servers see it.
SERF_HEALTH = "serfHealth"

#: Consul reaps a session whose TTL ran out at up to this many TTLs.
_SESSION_TTL_MULTIPLIER = 2


class Timers(Protocol):
    """What the model needs of a scheduler: the time, and a callback later."""

    def now(self) -> float:
        """The current virtual time, in seconds."""

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run *callback* at virtual time *when* (at once if it has passed)."""


class ManualTimers:
    """A :class:`Timers` advanced by hand, for scripts (and conformance
    tests) that drive the model directly."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Queue *callback* for *when*."""
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, callback))

    def advance(self, seconds: float) -> None:
        """Move the time on by *seconds*, running what falls due on the way,
        each at its own time."""
        until = self._now + seconds
        while self._due and self._due[0][0] <= until:
            when, _, callback = heapq.heappop(self._due)
            self._now = max(self._now, when)
            callback()
        self._now = until


class ModelError(Exception):
    """A request Consul refuses with an error (HTTP 4xx/5xx); the text is
    Consul's, as far as the election reads it.

    :ivar status: the HTTP status Consul answers."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class NoClusterLeader(ModelError):
    """``500 No cluster leader``: a Raft election runs."""

    def __init__(self, text: str = "No cluster leader") -> None:
        super().__init__(500, text)


@dataclass
class _Check:
    node: str
    check_id: str
    ttl: float
    passing: bool
    passed_at: float = 0.0
    #: Bumped by every pass, so that a timer set by an earlier pass is void.
    generation: int = 0


@dataclass
class _Session:
    session_id: str
    node: str
    checks: tuple[str, ...]
    lock_delay: float
    ttl: float
    generation: int = 0


@dataclass
class _Server:
    #: key -> (when this server applied the invalidation, when its lock-delay ends)
    lock_delays: dict[str, tuple[float, float]] = field(default_factory=dict)


#: One operation of a transaction, as the HTTP body names it: ``Verb``
#: (``lock``, ``unlock``, ``set``, ``delete``, ``check-index``, ``get``),
#: ``Key``, ``Value`` (bytes), ``Session``, ``Flags``, ``Index``.
TxnOp = Mapping[str, Any]


class ConsulModel:
    """The servers, agents and KV store of one Consul datacenter.

    :param timers: the virtual clock and its callbacks.
    :param servers: how many servers (each keeps its own lock-delays).
    :param rng: where the model draws its randomness (session IDs, the
        jitter of blocking queries); seed it for a replayable run.
    :param apply_lag: how long after the Raft leader each follower applies
        a write (its lock-delays start that much later).
    :param sync_delay: how long an agent takes to tell the servers that a
        check went critical.
    :param serf_detect: how long the servers take to mark a silent node
        failed (its ``serfHealth`` critical).
    """

    def __init__(self, timers: Timers, *, servers: int = 3, rng: random.Random | None = None,
                 apply_lag: float = 0.005, sync_delay: float = 0.01, serf_detect: float = 5.0) -> None:
        self.timers = timers
        self.rng = rng or random.Random(0)
        self.servers = [_Server() for _ in range(servers)]
        #: Which server leads Raft (None: an election runs).
        self.leader: int | None = 0
        self.apply_lag = apply_lag
        self.sync_delay = sync_delay
        self.serf_detect = serf_detect
        self.raft_index = 10
        self._kv: dict[str, KeyEntry] = {}
        self._kv_index = 0  # the KV table's index: the last change to any key, deletions too
        self._checks: dict[tuple[str, str], _Check] = {}
        self._sessions: dict[str, _Session] = {}
        self._nodes: dict[str, bool] = {}  # node -> serfHealth passing
        self._frozen: set[str] = set()
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        #: Every invalidation, as (time, session, why), for the timeline.
        self.invalidations: list[tuple[float, str, str]] = []

    # -- nodes and checks (the agent's side) -----------------------------------

    def add_node(self, node: str) -> None:
        """A node joins, its agent alive (``serfHealth`` passing)."""
        self._nodes[node] = True

    def node_alive(self, node: str) -> bool:
        """Whether the servers see *node*'s agent alive."""
        return self._nodes.get(node, False)

    def register_check(self, node: str, check_id: str, ttl: float, passing: bool = True) -> None:
        """Register a TTL check on *node*'s agent (the library registers it
        passing: a new check starts critical, and a session cannot bind to a
        critical check)."""
        check = _Check(node, check_id, ttl, passing)
        self._checks[(node, check_id)] = check
        if passing:
            self._arm(check)

    def deregister_check(self, node: str, check_id: str) -> None:
        """Remove a check: the sessions bound to it are invalidated."""
        if self._checks.pop((node, check_id), None) is not None:
            self._check_critical(node, check_id, "check deregistered")

    def pass_check(self, node: str, check_id: str) -> None:
        """Pass a TTL check (``PUT /v1/agent/check/pass``).

        :raises ModelError: no such check on that agent."""
        check = self._checks.get((node, check_id))
        if check is None:
            raise ModelError(500, f'Unknown check "{check_id}"')
        check.passing = True
        self._arm(check)

    def check_passing(self, node: str, check_id: str) -> bool:
        """Whether the check is registered and passing."""
        check = self._checks.get((node, check_id))
        return check is not None and check.passing

    def _arm(self, check: _Check) -> None:
        check.passed_at = self.timers.now()
        check.generation += 1
        generation = check.generation

        def expire() -> None:
            if check.generation == generation and check.passing and self._checks.get(
                    (check.node, check.check_id)) is check:
                if check.node in self._frozen:
                    return  # the agent's TTL timer runs when the agent does (see thaw_agent)
                check.passing = False
                self.timers.call_at(self.timers.now() + self.sync_delay,
                                    self._critical_later(check.node, check.check_id))

        self.timers.call_at(self.timers.now() + check.ttl, expire)

    def _check_critical(self, node: str, check_id: str, why: str) -> None:
        check = self._checks.get((node, check_id))
        if check is not None and check.passing:
            return  # passed again before the servers heard
        for s in [s for s in self._sessions.values() if s.node == node and check_id in s.checks]:
            self._invalidate(s.session_id, why)

    def _critical_later(self, node: str, check_id: str) -> Callable[[], None]:
        return lambda: self._check_critical(node, check_id, "check critical")

    def freeze_agent(self, node: str) -> None:
        """The agent stops (SIGSTOP): its TTL timers stop with it, and after
        :attr:`serf_detect` the servers mark the node failed, invalidating
        every session on it."""
        self._frozen.add(node)

        def detect() -> None:
            if node in self._frozen and self._nodes.get(node):
                self.fail_node(node)

        self.timers.call_at(self.timers.now() + self.serf_detect, detect)

    def thaw_agent(self, node: str) -> None:
        """The agent runs again: checks whose TTL ran out meanwhile go
        critical at once, and the node is alive again."""
        self._frozen.discard(node)
        self._nodes[node] = True
        now = self.timers.now()
        for check in [c for c in self._checks.values() if c.node == node and c.passing]:
            if check.passed_at + check.ttl > now:
                continue  # its timer, still to come, runs as usual
            # A TTL timer that came due while the agent was stopped fires as
            # soon as it runs again.
            check.passing = False
            self.timers.call_at(self.timers.now() + self.sync_delay, self._critical_later(node, check.check_id))

    def agent_frozen(self, node: str) -> bool:
        """Whether *node*'s agent is frozen."""
        return node in self._frozen

    def fail_node(self, node: str) -> None:
        """The node fails (``serfHealth`` critical): its sessions are invalidated."""
        self._nodes[node] = False
        for s in [s for s in self._sessions.values() if s.node == node]:
            self._invalidate(s.session_id, "node failed")

    def restart_agent(self, node: str) -> None:
        """The agent restarts: it leaves and joins again (its sessions are
        invalidated), and its checks are gone until registered again."""
        self.fail_node(node)
        for key in [k for k in self._checks if k[0] == node]:
            del self._checks[key]
        self._frozen.discard(node)
        self._nodes[node] = True

    # -- sessions ---------------------------------------------------------------

    def create_session(self, node: str, checks: Sequence[str] = (SERF_HEALTH,), lock_delay: float = 15.0,
                       ttl: float = 0.0) -> str:
        """Create a session on *node* bound to *checks* (``serfHealth`` is
        the node's own), with *lock_delay* and a *ttl* (0: none).

        :raises ModelError: a check is missing or critical, or no Raft leader."""
        self._need_leader()
        for check_id in checks:
            if check_id == SERF_HEALTH:
                if not self._nodes.get(node):
                    raise ModelError(500, f"Check '{SERF_HEALTH}' is in critical state")
                continue
            check = self._checks.get((node, check_id))
            if check is None:
                raise ModelError(500, f"Missing check '{check_id}' registration")
            if not check.passing:
                raise ModelError(500, f"Check '{check_id}' is in critical state")
        session_id = "%08x-%04x-%04x-%04x-%012x" % tuple(self.rng.getrandbits(b) for b in (32, 16, 16, 16, 48))
        self._commit()
        session = _Session(session_id, node, tuple(checks), min(lock_delay, 60.0), ttl)
        self._sessions[session_id] = session
        self._arm_session(session)
        return session_id

    def _arm_session(self, session: _Session) -> None:
        if not session.ttl:
            return
        session.generation += 1
        generation = session.generation

        def expire() -> None:
            if session.generation == generation and session.session_id in self._sessions:
                self._invalidate(session.session_id, "session TTL")

        self.timers.call_at(self.timers.now() + session.ttl * _SESSION_TTL_MULTIPLIER, expire)

    def renew_session(self, session_id: str) -> bool:
        """Renew a session's TTL; False if it is gone (Consul answers 404).

        :raises NoClusterLeader: no Raft leader."""
        self._need_leader()
        session = self._sessions.get(session_id)
        if session is None:
            return False
        self._arm_session(session)
        return True

    def destroy_session(self, session_id: str) -> None:
        """Destroy a session, as an operator or its owner does: it is
        invalidated (its locks released, their lock-delays set)."""
        self._need_leader()
        if session_id in self._sessions:
            self._invalidate(session_id, "session destroyed")

    def session_valid(self, session_id: str) -> bool:
        """Whether the session exists (``/v1/session/info`` answers it)."""
        return session_id in self._sessions

    def session_lock_delay(self, session_id: str) -> float | None:
        """The session's lock-delay, or None if it is gone."""
        session = self._sessions.get(session_id)
        return None if session is None else session.lock_delay

    def _invalidate(self, session_id: str, why: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        now = self.timers.now()
        self.invalidations.append((now, session_id, why))
        index = self._commit()
        for key, entry in list(self._kv.items()):
            if entry.session != session_id:
                continue
            self._store(replace(entry, session=None, modify_index=index))
            if session.lock_delay > 0:
                # Each server remembers the lock-delay as it applies the
                # invalidation; followers apply it a little later.
                for i, server in enumerate(self.servers):
                    applied = now + (0.0 if i == self.leader else self.apply_lag * (i + 1))
                    server.lock_delays[key] = (applied, applied + session.lock_delay)

    # -- Raft -------------------------------------------------------------------

    def lose_leader(self) -> None:
        """A Raft election starts: what needs a leader is refused until
        :meth:`elect`."""
        self.leader = None

    def elect(self, server: int, *, from_snapshot: bool = False) -> None:
        """*server* becomes the Raft leader. Its lock-delays are those it had
        applied by now (none if it was restored from a snapshot)."""
        if from_snapshot:
            self.servers[server].lock_delays.clear()
        self.leader = server

    def _need_leader(self) -> None:
        if self.leader is None:
            raise NoClusterLeader()

    def _commit(self) -> int:
        self.raft_index += 1
        return self.raft_index

    # -- KV ---------------------------------------------------------------------

    def get(self, key: str) -> tuple[int, KeyEntry | None]:
        """Read *key* as the Raft leader serves it (Consul's default
        consistency): ``(index, entry)``, the index the key's ModifyIndex,
        or the KV table's index when it does not exist.

        :raises NoClusterLeader: no Raft leader."""
        self._need_leader()
        entry = self._kv.get(key)
        return (entry.modify_index if entry is not None else max(self._kv_index, 1)), entry

    def peek(self, key: str) -> KeyEntry | None:
        """The entry as it is, without asking a leader (for checks and timelines)."""
        return self._kv.get(key)

    def watch(self, key: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* once, at the next change of *key* (a blocking
        query's wake-up); returns a function that cancels it."""
        callbacks = self._watchers.setdefault(key, [])
        callbacks.append(callback)

        def cancel() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return cancel

    def blocking_wait(self, wait: float) -> float:
        """How long a blocking query with *wait* is held at most: the wait
        plus Consul's jitter of up to a sixteenth of it."""
        return wait + self.rng.uniform(0.0, wait / 16)

    def _store(self, entry: KeyEntry | None, key: str = "") -> None:
        key = entry.key if entry is not None else key
        if entry is None:
            self._kv.pop(key, None)
            self._kv_index = self.raft_index
        else:
            self._kv[key] = entry
            self._kv_index = entry.modify_index
        # A copy: a callback cancels itself from the list it is in.
        for callback in list(self._watchers.pop(key, [])):
            callback()

    def lock_delayed(self, key: str) -> bool:
        """Whether the Raft leader's memory holds a lock-delay on *key* now."""
        if self.leader is None:
            return False
        now = self.timers.now()
        applied, until = self.servers[self.leader].lock_delays.get(key, (0.0, 0.0))
        return applied <= now < until

    def precheck(self, ops: Sequence[TxnOp]) -> str | None:
        """What the Raft leader checks before it commits *ops*: the
        lock-delay of every key a ``lock`` would take. The error text of a
        refusal, or None to commit.

        :raises NoClusterLeader: no Raft leader."""
        self._need_leader()
        for op in ops:
            if op["Verb"] == "lock" and self.lock_delayed(op["Key"]):
                return f'failed to lock key "{op["Key"]}" due to lock delay'
        return None

    def apply(self, ops: Sequence[TxnOp]) -> tuple[list[KeyEntry | None], str | None]:
        """Apply a transaction's operations as the state store does, all or
        none: ``(results, None)``, or ``([], error)`` with Consul's text.

        :raises NoClusterLeader: no Raft leader."""
        self._need_leader()
        index = self._commit()
        staged: dict[str, KeyEntry | None] = {}

        def current(key: str) -> KeyEntry | None:
            return staged[key] if key in staged else self._kv.get(key)

        results: list[KeyEntry | None] = []
        for i, op in enumerate(ops):
            verb, key = op["Verb"], op["Key"]
            entry = current(key)
            value = bytes(op.get("Value") or b"")
            flags = int(op.get("Flags") or 0)
            session = op.get("Session") or None
            if verb == "lock":
                if session not in self._sessions:
                    return [], f'op {i}: failed to lock key "{key}": invalid session "{session}"'
                if entry is not None and entry.session is not None and entry.session != session:
                    return [], f'op {i}: failed to lock key "{key}", lock is already held'
                if entry is None:
                    new = KeyEntry(key, value, session, 1, index, index, flags)
                elif entry.session == session:
                    new = replace(entry, value=value, flags=flags, modify_index=index)
                else:
                    new = replace(entry, value=value, flags=flags, session=session,
                                  lock_index=entry.lock_index + 1, modify_index=index)
            elif verb == "unlock":
                if entry is None or entry.session != session:
                    return [], f'op {i}: failed to unlock key "{key}", lock isn\'t held, or is held by another session'
                new = replace(entry, value=value, flags=flags, session=None, modify_index=index)
            elif verb == "set":
                new = KeyEntry(key, value, entry.session if entry else None, 0,
                               index, entry.create_index if entry else index, flags)
            elif verb == "cas":
                want = int(op.get("Index") or 0)
                if (entry.modify_index if entry is not None else 0) != want:
                    return [], f'op {i}: failed to set key "{key}", index is stale'
                new = KeyEntry(key, value, entry.session if entry else None, 0,
                               index, entry.create_index if entry else index, flags)
            elif verb == "delete":
                staged[key] = None
                continue
            elif verb == "delete-cas":
                if entry is None or entry.modify_index != int(op.get("Index") or 0):
                    return [], f'op {i}: failed to delete key "{key}", index is stale'
                staged[key] = None
                continue
            elif verb == "check-index":
                if entry is None or entry.modify_index != int(op.get("Index") or 0):
                    return [], f'op {i}: failed to check index of key "{key}", index is stale'
                results.append(entry)
                continue
            elif verb == "get":
                if entry is None:
                    return [], f'op {i}: key "{key}" doesn\'t exist'
                results.append(entry)
                continue
            else:
                raise ValueError(f"unknown verb {verb!r}")
            staged[key] = new
            results.append(new)
        for key, staged_entry in staged.items():
            self._store(staged_entry, key)
        return results, None

    def txn(self, ops: Sequence[TxnOp]) -> tuple[list[KeyEntry | None], str | None]:
        """A transaction as one request: :meth:`precheck`, then :meth:`apply`."""
        refused = self.precheck(ops)
        if refused is not None:
            return [], refused
        return self.apply(ops)

    # The plain KV endpoint, each verb a transaction of one.

    def acquire(self, key: str, value: bytes, session_id: str, flags: int = 0) -> bool:
        """``PUT /v1/kv/<key>?acquire=<session>``: False if held by another
        session or a lock-delay runs (the key may be free).

        :raises ModelError: the session does not exist."""
        results, error = self.txn([{"Verb": "lock", "Key": key, "Value": value, "Session": session_id,
                                    "Flags": flags}])
        if error is not None and "invalid session" in error:
            raise ModelError(500, f"invalid session \"{session_id}\"")
        return error is None

    def release(self, key: str, session_id: str, value: bytes = b"", flags: int = 0) -> bool:
        """``PUT /v1/kv/<key>?release=<session>`` by anyone: False if that
        session does not hold the key."""
        return self.txn([{"Verb": "unlock", "Key": key, "Value": value, "Session": session_id,
                          "Flags": flags}])[1] is None

    def put(self, key: str, value: bytes, flags: int = 0, cas: int | None = None) -> bool:
        """``PUT /v1/kv/<key>`` (``?cas=`` with *cas*; 0: only if missing)."""
        if cas is None:
            op: dict[str, Any] = {"Verb": "set", "Key": key, "Value": value, "Flags": flags}
        else:
            op = {"Verb": "cas", "Key": key, "Value": value, "Flags": flags, "Index": cas}
        return self.txn([op])[1] is None

    def delete(self, key: str, cas: int | None = None) -> bool:
        """``DELETE /v1/kv/<key>`` (``?cas=`` with *cas*)."""
        op = {"Verb": "delete", "Key": key} if cas is None else {"Verb": "delete-cas", "Key": key, "Index": cas}
        return self.txn([op])[1] is None
