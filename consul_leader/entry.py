"""A KV entry as the election reads it: Consul's JSON parsed once into a
frozen record, so that the rules decide on named fields, not on
``dict.get("Session")`` scattered through the code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KeyEntry", "RawEntry"]

#: A KV entry as Consul's HTTP API (and :meth:`ConsulClient.get_key
#: <consul_leader.client.ConsulClient.get_key>`) returns it: ``Key``,
#: ``Value`` (bytes), ``Session``, ``LockIndex``, ``ModifyIndex``,
#: ``CreateIndex``, ``Flags``.
RawEntry = dict[str, Any]


@dataclass(frozen=True)
class KeyEntry:
    """One KV entry at one moment.

    :ivar key: the key.
    :ivar value: the value (``b""`` for none).
    :ivar session: the session that holds the key's lock, or None.
    :ivar lock_index: how many sessions took the lock since the key was created.
    :ivar modify_index: the Raft index of the entry's last change.
    :ivar create_index: the Raft index at which the key was created.
    :ivar flags: the entry's flags (the election writes the acquisition's
        time there, in Unix milliseconds).

    .. versionadded:: 0.2
    """

    key: str = ""
    value: bytes = b""
    session: str | None = None
    lock_index: int = 0
    modify_index: int = 0
    create_index: int = 0
    flags: int = 0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> KeyEntry:
        """Read one entry of Consul's JSON (its ``Value`` already decoded to bytes)."""
        value = raw.get("Value") or b""
        return cls(key=str(raw.get("Key") or ""),
                   value=value if isinstance(value, bytes) else str(value).encode("utf-8"),
                   session=raw.get("Session") or None, lock_index=int(raw.get("LockIndex") or 0),
                   modify_index=int(raw.get("ModifyIndex") or 0), create_index=int(raw.get("CreateIndex") or 0),
                   flags=int(raw.get("Flags") or 0))

    @classmethod
    def parse_optional(cls, raw: Mapping[str, Any] | None) -> KeyEntry | None:
        """:meth:`parse`, with None (no such key) kept as None."""
        return None if raw is None else cls.parse(raw)

    @property
    def free(self) -> bool:
        """True when no session holds the key's lock."""
        return self.session is None
