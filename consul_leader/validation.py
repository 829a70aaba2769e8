"""Checks of user input shared by the public classes."""

from __future__ import annotations

from typing import Any, Optional

from .errors import ConfigurationError, ConfigurationTypeError


def check_key(key: Any) -> str:
    """Validate a Consul KV key for the leader lock."""
    if not isinstance(key, str):
        raise ConfigurationTypeError(f"key must be a str like 'service/beat/leader', got {type(key).__name__}")
    if not key.strip():
        raise ConfigurationError("key must not be empty; give a KV path like 'service/beat/leader'")
    if key.startswith("/"):
        raise ConfigurationError(f"key must not start with '/': got {key!r}; write {key.lstrip('/')!r}")
    if key.endswith("/"):
        raise ConfigurationError(f"key must name a key, not a folder ending in '/': got {key!r}")
    if any(ord(ch) < 32 for ch in key):
        raise ConfigurationError(f"key must not contain control characters: got {key!r}")
    return key


def check_identity(identity: Any) -> str:
    """Validate a candidate's identity (the value stored in the key)."""
    if not isinstance(identity, str):
        raise ConfigurationTypeError(f"identity must be a str such as 'host:pid', got {type(identity).__name__}")
    if not identity.strip():
        raise ConfigurationError("identity must not be empty")
    if len(identity.encode("utf-8")) > 512 * 1024:
        raise ConfigurationError("identity must be at most 512 KiB (Consul's limit for a value)")
    return identity


def check_optional_seconds(name: str, value: Any) -> Optional[float]:
    """Validate an optional positive duration."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationTypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not 0 < value < float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)
