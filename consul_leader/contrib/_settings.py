"""What the framework integrations share: reading Candidate arguments from a
framework's settings, and starting a candidate once per process.

Each framework names its settings its own way (``CONSUL_LEADER["TTL"]`` in
Django, ``CONSUL_LEADER_TTL`` in Flask, ``consul_leader_ttl`` in Celery); all
of them map onto the keyword arguments of :class:`~consul_leader.Candidate`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Collection, Dict, Mapping, Optional

from ..candidate import Candidate
from ..errors import ConfigurationError, ConfigurationTypeError
from ..runtime import check_threads_usable

__all__ = ["CANDIDATE_OPTIONS", "PerProcess", "candidate_from_settings", "lowered"]

#: The Candidate arguments a settings file may give (``consul=`` and
#: ``wait=`` make no sense there).
CANDIDATE_OPTIONS = ("key", "identity", "address", "token", "datacenter", "verify", "cert", "ttl", "lock_delay",
                     "lease", "heartbeat", "session_ttl", "term_limit", "timeout")


def candidate_from_settings(values: Mapping[str, Any], name: Callable[[str], str], source: str,
                            extra: Collection[str] = ()) -> Candidate:
    """Build a (not yet started) Candidate from framework settings.

    :param values: option name (lower case, as in :data:`CANDIDATE_OPTIONS`
        or *extra*) to value; None values count as not given.
    :param name: the user-facing name of an option, e.g. ``CONSUL_LEADER_TTL``.
    :param source: where the settings live, for messages.
    :param extra: more option names the integration itself reads.
    :raises ConfigurationError: an unknown or missing setting, or a value the
        Candidate refuses; the message names the setting.
    :raises ConfigurationTypeError: a value of the wrong type.
    """
    unknown = sorted(set(values) - set(CANDIDATE_OPTIONS) - set(extra))
    if unknown:
        known = ", ".join(name(option) for option in (*CANDIDATE_OPTIONS, *extra))
        raise ConfigurationError(f"{name(unknown[0])} in {source} is not a consul-leader setting; known: {known}")
    if values.get("key") is None:
        raise ConfigurationError(f"{name('key')} is required in {source}: the Consul KV key of the lock, "
                                 f"e.g. 'myservice/leader'")
    kwargs = {option: values[option] for option in CANDIDATE_OPTIONS if values.get(option) is not None}
    try:
        return Candidate(**kwargs)
    except (ConfigurationError, ConfigurationTypeError) as exc:
        # The Candidate names its argument ("ttl must be..."); say which setting that was.
        given = ", ".join(f"{name(option)}={value!r}" for option, value in kwargs.items() if option != "token")
        raise type(exc)(f"{source}: {exc} (from {given})") from None


class PerProcess:
    """Starts a candidate at most once in each process.

    A candidate forgets its threads, session and lock in a forked child (see
    "Processes" in the docs) and must be started again there.
    :meth:`ensure_started` is cheap enough to call on every request: it
    compares the process id and does nothing more once started here.

    :param candidate: the candidate to start.
    """

    def __init__(self, candidate: Candidate) -> None:
        self.candidate = candidate
        self._pid: Optional[int] = None

    @property
    def started_here(self) -> bool:
        """True if :meth:`ensure_started` ran in this process."""
        return self._pid == os.getpid()

    def ensure_started(self) -> Candidate:
        """Start the candidate unless it was already started in this process.
        A candidate that was stopped here stays stopped.

        :raises ConfigurationError: this process cannot run a candidate's
            threads (gevent's monkey-patching, uWSGI without threads)."""
        pid = os.getpid()
        if self._pid != pid:
            check_threads_usable()  # a gevent worker, uWSGI without threads: refuse, saying why
            # Two threads of a fresh worker may both get here; start() is
            # idempotent under the candidate's own lock.
            self._pid = pid
            self.candidate.start()
        return self.candidate


def lowered(values: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """The entries of *values* whose key starts with *prefix*, keyed by the
    rest in lower case: ``{"CONSUL_LEADER_TTL": 3}`` gives ``{"ttl": 3}``."""
    return {k[len(prefix):].lower(): v for k, v in values.items() if isinstance(k, str) and k.startswith(prefix)}
