"""The exceptions consul-leader raises.

Everything derives from :class:`ConsulLeaderError`. Configuration mistakes are
also :class:`ValueError` (or :class:`TypeError`), so callers can catch them by
meaning or by builtin, the way requests does it. Each docstring says whether
the condition is worth retrying; the candidate's own thread already retries
what is retryable.
"""

from __future__ import annotations

__all__ = [
    "AlsoLockHeld",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ConsulLeaderError",
    "ConsulTLSError",
    "ConsulUnavailable",
    "LockHeld",
    "NoClusterLeader",
    "NotLeader",
    "NotRunning",
    "PermissionDenied",
    "RequestRejected",
    "SessionLost",
]


class ConsulLeaderError(Exception):
    """Root of every exception raised by consul-leader.

    Errors about a request to Consul carry what requests attaches to its
    own errors: which step failed, on which key, with what answer. The
    original exception (requests') is ``__cause__``.

    :ivar operation: the step that failed, e.g. ``"acquire lock"``, or None.
    :ivar key: the KV key concerned, or None.
    :ivar status: the HTTP status Consul answered, or None (no answer).
    """

    def __init__(self, message: str = "", *, operation: str | None = None, key: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.key = key
        self.status = status


class ConfigurationError(ConsulLeaderError, ValueError):
    """An argument or setting is invalid; the message names it, its value and
    what is allowed. Not retryable: fix the call."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type; the message names it. Both a
    :class:`TypeError` and, as every configuration mistake, a
    :class:`ValueError`. Not retryable."""


class ConsulUnavailable(ConsulLeaderError, ConnectionError):
    """The Consul agent could not be reached or answered with a server error.

    Retryable: the candidate retries with backoff, within its lease while it
    leads. :meth:`Follower.wait_for_leader` raises it when the key could not
    be read during its whole timeout (None means Consul answered that nobody
    leads)."""


class ConsulTLSError(ConsulUnavailable):
    """The TLS handshake with the agent failed (wrong CA, missing or refused
    client certificate). Retried like any unreachable agent, but it rarely
    heals by itself: check ``CONSUL_CACERT`` / ``verify=`` and the certificates."""


class NoClusterLeader(ConsulUnavailable):
    """The Consul servers have no Raft leader right now (``500 No cluster
    leader``). Not a lost lock: retryable; a leader steps down only when its
    lease runs out."""


class PermissionDenied(ConsulLeaderError, PermissionError):
    """The ACL token lacks a permission; the message names the operation and
    the rule it needs. The candidate keeps retrying with backoff (a policy can
    be fixed while it runs), but :meth:`Candidate.wait_for_leadership`,
    :meth:`Candidate.run` and :meth:`Follower.wait_for_leader` raise it at
    once instead of waiting in vain.

    :ivar rule: the ACL policy rule the operation needs (HCL), or None when
        the token itself is unknown to Consul.
    """

    def __init__(self, message: str = "", *, operation: str | None = None, key: str | None = None,
                 status: int | None = None, rule: str | None = None) -> None:
        super().__init__(message, operation=operation, key=key, status=status)
        self.rule = rule


class RequestRejected(ConsulLeaderError):
    """Consul answered 400: it refuses the request itself (for instance a key
    with characters it does not accept). Not retryable: the candidate gives
    up, and :meth:`Candidate.wait_for_leadership` and :meth:`Candidate.run`
    raise it."""


class SessionLost(ConsulLeaderError):
    """The candidate's Consul session no longer exists (its check went
    critical, it was destroyed, or its agent left). The candidate makes a new
    one; retryable."""


class NotLeader(ConsulLeaderError):
    """Raised by ``@leader_only(raise_not_leader=True)`` functions called while
    this process does not lead."""


class LockHeld(ConsulLeaderError):
    """The lock is held by another candidate and this one was told not to wait
    (``wait=False``). Final for that candidate."""


class AlsoLockHeld(LockHeld):
    """A key that a lock is taken together with (``consul-leader run``'s
    ``PREFIX/.lock``, which ``consul lock PREFIX`` locks) is held by another
    session; :attr:`key` names it."""


class NotRunning(ConsulLeaderError, RuntimeError):
    """The candidate is not running (never started, or stopped), so waiting for
    leadership cannot succeed."""
