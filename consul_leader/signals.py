"""Blinker signals sent by candidates and followers.

They live in the library's own :class:`blinker.Namespace`. The sender is the
:class:`~consul_leader.Candidate` or :class:`~consul_leader.Follower`;
receivers run on its background thread and get keyword arguments::

    from consul_leader import elected

    @elected.connect
    def started(candidate, fencing_token, **extra):
        ...

A receiver that raises is logged and the others still run: a bug in a
receiver never stops an election.
"""

from __future__ import annotations

import logging
from typing import Any

import blinker

__all__ = ["deposed", "elected", "election_error", "leader_changed", "send"]

log = logging.getLogger("consul_leader")

_namespace = blinker.Namespace()

#: Sent when the candidate wins the lock. ``fencing_token=`` (int) is the
#: key's ModifyIndex at the acquisition; it grows with every later term.
elected = _namespace.signal("elected", doc="The candidate became leader; kwargs: fencing_token.")

#: Sent when a candidate that was elected stops leading, after its job (if
#: any) has returned. ``reason=`` (str) says why: stepping down,
#: ``"resigned"``, ``"stopped"``, ``"term limit"``, ``"job finished"``,
#: ``"job failed"``; or deposed, ``"lock lost"`` (session gone, key deleted or
#: taken), ``"key overwritten"``, ``"lease expired"``.
deposed = _namespace.signal("deposed", doc="The candidate stopped leading; kwargs: reason.")

#: Sent when the observed leader changes; ``leader=`` is its identity or None.
leader_changed = _namespace.signal("leader_changed", doc="The leader changed; kwargs: leader.")

#: Sent when talking to Consul failed; ``error=`` is the exception. The
#: candidate retries by itself.
election_error = _namespace.signal("election_error", doc="Talking to Consul failed; kwargs: error.")


def send(signal: blinker.NamedSignal, sender: Any, **kwargs: Any) -> None:
    """Send *signal*, calling each receiver on its own so that one that
    raises is logged and the rest still run (blinker itself would stop at
    the first exception)."""
    for receiver in list(signal.receivers_for(sender)):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception("consul_leader: a receiver of the %r signal raised; the election goes on",
                          signal.name)
