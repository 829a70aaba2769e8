"""Faults an operator (or a test) can inflict on a candidate: what tests
would otherwise do through private attributes."""

from __future__ import annotations

from typing import Any, Optional

# -- faults an operator (or a test) can inflict on a candidate ------------------

def session_id(candidate: Any) -> Optional[str]:
    """The ID of the Consul session *candidate* holds its lock with (None
    before it made one), as ``consul`` commands and the HTTP API name it.

    :param candidate: a :class:`~consul_leader.Candidate` or an
        :class:`~consul_leader.Elector`."""
    return candidate.session_id  # type: ignore[no-any-return]


def check_id(candidate: Any) -> Optional[str]:
    """The ID of the TTL health check *candidate* registered on its agent
    (None before it made one).

    :param candidate: a :class:`~consul_leader.Candidate`."""
    return candidate.check_id  # type: ignore[no-any-return]


def destroy_session(candidate: Any) -> None:
    """Destroy *candidate*'s session through its agent's HTTP API, as an
    operator running ``consul`` would: its lock is released and Consul
    starts the lock-delay.

    :raises RuntimeError: the candidate has no session yet."""
    sid = session_id(candidate)
    if sid is None:
        raise RuntimeError(f"{candidate!r} has no session yet")
    candidate.client.destroy_session(sid)


def delete_key(candidate: Any) -> None:
    """Delete *candidate*'s lock key, as ``consul kv delete`` would: the lock
    is gone without an invalidation, so Consul sets no lock-delay."""
    candidate.client.delete_key(candidate.key)


def overwrite_key(candidate: Any, value: bytes = b"someone else") -> None:
    """Write *value* into *candidate*'s lock key without a session, as
    ``consul kv put`` would: the lock stays, its value changes."""
    candidate.client.put_key(candidate.key, value)

