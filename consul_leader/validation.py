"""Checks of user input shared by the public classes.

Each raises :class:`~consul_leader.ConfigurationError` (a :class:`ValueError`)
or :class:`~consul_leader.ConfigurationTypeError` (a :class:`TypeError`) whose
message names the argument, what it got and what is allowed. A secret (the
ACL token) is never echoed.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

from .errors import ConfigurationError, ConfigurationTypeError


def _utf8(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name} must be valid Unicode text (it holds a lone surrogate): "
                                 f"got {text!r}") from None


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
    _utf8("key", key)
    if not key.isprintable():
        # Consul answers 400 to a key with a control, format or unassigned character.
        raise ConfigurationError(f"key must hold printable characters only: got {key!r}")
    # Consul's HTTP server cleans the path, so 'a//b' or 'a/../b' would lock
    # another key than the one named.
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ConfigurationError(f"key must not contain empty, '.' or '..' path segments: got {key!r}")
    return key


def check_service(service: Any) -> str:
    """Validate the service name a candidate's instance is registered under."""
    if not isinstance(service, str):
        raise ConfigurationTypeError(f"service must be a str like 'consul-leader', got {type(service).__name__}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", service):
        # What Consul's DNS interface can serve: a DNS label.
        raise ConfigurationError(f"service must be a DNS-compatible name (letters, digits, '-' and '_', at most "
                                 f"63 characters, starting with a letter or digit): got {service!r}")
    return service


def default_identity() -> str:
    """The identity of a candidate not given one: ``"<hostname>:<pid>"``.

    .. versionadded:: 0.2"""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_identity(identity: Any) -> str:
    """Validate a candidate's identity (the value stored in the key)."""
    if not isinstance(identity, str):
        raise ConfigurationTypeError(f"identity must be a str such as 'host:pid', got {type(identity).__name__}")
    if not identity.strip():
        raise ConfigurationError("identity must not be empty")
    _utf8("identity", identity)
    if len(identity.encode("utf-8")) > 512 * 1024:
        raise ConfigurationError("identity must be at most 512 KiB (Consul's limit for a value)")
    return identity


def _seconds(name: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationTypeError(f"{name} must be {what}, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf if value > 0 else -math.inf


def check_number(name: str, value: Any, low: float, high: float) -> float:
    """Validate a finite number of seconds in ``[low, high]``, returned as a float."""
    number = _seconds(name, value, "a number of seconds")
    if not (math.isfinite(number) and low <= number <= high):
        raise ConfigurationError(f"{name} must be between {low:g} and {high:g} seconds, got {value!r}")
    return number


def check_optional_seconds(name: str, value: Any) -> float | None:
    """Validate an optional positive, finite duration."""
    if value is None:
        return None
    number = _seconds(name, value, "a number of seconds or None")
    if not 0 < number < math.inf:
        raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return number


def check_timeout(name: str, value: Any) -> float | None:
    """Validate how long to wait: None (no limit) or seconds >= 0."""
    if value is None:
        return None
    number = _seconds(name, value, "a number of seconds or None")
    if math.isnan(number) or number < 0:
        raise ConfigurationError(f"{name} must be a non-negative number of seconds or None, got {value!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """Validate a flag: True or False, not merely truthy."""
    if not isinstance(value, bool):
        raise ConfigurationTypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_job(job: Any) -> Callable[[threading.Event], Any]:
    """Validate a job for :meth:`Candidate.run`: callable as ``job(stop_event)``."""
    if not callable(job):
        raise ConfigurationTypeError(f"job must be callable as job(stop_event), got {type(job).__name__}")
    try:
        signature = inspect.signature(job)
    except (TypeError, ValueError):
        return cast(Callable[[threading.Event], Any], job)  # a builtin without a signature: trust it
    try:
        signature.bind(threading.Event())
    except TypeError as exc:
        raise ConfigurationTypeError(f"job must accept one argument, job(stop_event): {exc}") from None
    return cast(Callable[[threading.Event], Any], job)


def check_signals(signums: Any) -> tuple[int, ...]:
    """Validate signal numbers that a handler can be installed for."""
    if isinstance(signums, (int, str, bytes)) or not hasattr(signums, "__iter__"):
        raise ConfigurationTypeError(f"signums must be a tuple of signal numbers such as "
                                     f"(signal.SIGTERM,), got {type(signums).__name__}")
    checked = []
    valid = signal.valid_signals()
    for signum in signums:
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise ConfigurationTypeError(f"signums must hold signal numbers such as signal.SIGTERM, "
                                         f"got {type(signum).__name__} {signum!r}")
        if signum not in valid or signum in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigurationError(f"signums: {signum!r} is not a signal a handler can be installed for")
        checked.append(int(signum))
    return tuple(checked)
