"""Prometheus metrics for candidates (optional: ``pip install 'consul-leader[prometheus]'``).

::

    from consul_leader import Candidate, metrics

    candidate = Candidate("service/beat/leader").start()
    metrics.register(candidate)          # into prometheus_client's default registry
    metrics.start_http_server(9101)      # or your framework's /metrics view

Every value is read from the candidate when Prometheus scrapes, by a custom
collector: nothing is added to the election's hot path, and
:meth:`~consul_leader.Candidate.is_leader` stays a cheap read. Only the
transition counters are counted as they happen, by receivers of the
``elected`` and ``deposed`` signals.

Metrics, each labelled ``key`` only: a label whose value changes with
each process (the default identity is ``hostname:pid``) would start a new
series at every restart. One candidate per key and registry, as in a
process of its own.

- ``consul_leader_candidate_info`` (info): 1, with the candidate's
  ``identity`` as a label: join on ``key`` to see who a series belongs to.
- ``leader_election_master_status`` (gauge, label ``name``: the key): 1 while
  the candidate leads, as client-go's leader election exports it.
- ``consul_leader_is_leader`` (gauge): 1 while the candidate leads.
- ``consul_leader_lease_remaining_seconds`` (gauge): what is left of the lease.
- ``consul_leader_transitions_total`` (counter, label ``kind``: ``elected`` or ``deposed``).
- ``consul_leader_heartbeat_seconds`` (summary): duration of the successful
  heartbeat rounds (check pass, and session renew when due).
- ``consul_leader_heartbeat_failures_total`` (counter): failed heartbeat rounds.
- ``consul_leader_healthy`` (gauge): 1 while :meth:`~consul_leader.Candidate.health` is ok.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import signals
from .candidate import Candidate

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["register", "start_http_server", "unregister"]

_collectors: weakref.WeakKeyDictionary[Any, _Collector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def _reset_after_fork() -> None:
    # As in consul_leader.client: a scrape's thread may have held these at
    # the fork (a gunicorn --preload master serving metrics); the child's
    # copies would stay held for good.
    global _collectors_lock
    _collectors_lock = threading.Lock()
    for collector in list(_collectors.values()):
        collector._lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError("consul_leader.metrics needs prometheus-client: "
                          "pip install 'consul-leader[prometheus]'") from exc
    return prometheus_client


class _Collector:
    """One per registry: reads every registered candidate at scrape time, so
    that candidates of several keys share one metric family each."""

    def __init__(self) -> None:
        self._candidates: weakref.WeakKeyDictionary[Candidate, dict[str, int]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, candidate: Candidate) -> None:
        with self._lock:
            if candidate in self._candidates:
                return
            self._candidates[candidate] = {"elected": 0, "deposed": 0}
        # Bound methods: blinker holds them weakly, the registry holds us.
        signals.elected.connect(self._on_elected, sender=candidate)
        signals.deposed.connect(self._on_deposed, sender=candidate)

    def remove(self, candidate: Candidate) -> bool:
        with self._lock:
            if self._candidates.pop(candidate, None) is None:
                return False
        signals.elected.disconnect(self._on_elected, sender=candidate)
        signals.deposed.disconnect(self._on_deposed, sender=candidate)
        return True

    def empty(self) -> bool:
        return not self._candidates

    def _count(self, candidate: Candidate, kind: str) -> None:
        with self._lock:
            counts = self._candidates.get(candidate)
            if counts is not None:
                counts[kind] += 1

    def _on_elected(self, candidate: Candidate, **kwargs: Any) -> None:
        self._count(candidate, "elected")

    def _on_deposed(self, candidate: Candidate, **kwargs: Any) -> None:
        self._count(candidate, "deposed")

    def describe(self) -> Iterator[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        core = _prometheus().metrics_core
        labels = ["key"]
        info = core.InfoMetricFamily("consul_leader_candidate", "The candidate of the key in this process.",
                                     labels=labels)
        master = core.GaugeMetricFamily("leader_election_master_status",
                                        "1 while this process leads the election named name (the key), as "
                                        "client-go's leader election.", labels=["name"])
        is_leader = core.GaugeMetricFamily("consul_leader_is_leader", "1 while this candidate leads the key.",
                                           labels=labels)
        lease = core.GaugeMetricFamily("consul_leader_lease_remaining_seconds",
                                       "Seconds left of the leader's lease; 0 when not leading.", labels=labels)
        healthy = core.GaugeMetricFamily("consul_leader_healthy",
                                         "1 while the candidate runs and its heartbeat is current.", labels=labels)
        transitions = core.CounterMetricFamily("consul_leader_transitions",
                                               "Times this candidate was elected or deposed.",
                                               labels=labels + ["kind"])
        latency = core.SummaryMetricFamily("consul_leader_heartbeat_seconds",
                                           "Duration of the successful heartbeat rounds.", labels=labels)
        failures = core.CounterMetricFamily("consul_leader_heartbeat_failures", "Failed heartbeat rounds.",
                                            labels=labels)
        if with_samples:
            with self._lock:
                snapshot = [(c, dict(counts)) for c, counts in self._candidates.items()]
            for candidate, counts in snapshot:
                values = [candidate.key]
                health = candidate.health()
                stats = candidate.heartbeat_stats
                info.add_metric(values, {"identity": candidate.identity})
                master.add_metric(values, 1.0 if health.is_leader else 0.0)
                is_leader.add_metric(values, 1.0 if health.is_leader else 0.0)
                lease.add_metric(values, health.lease_remaining)
                healthy.add_metric(values, 1.0 if health.ok else 0.0)
                for kind in ("elected", "deposed"):
                    transitions.add_metric(values + [kind], counts[kind])
                latency.add_metric(values, count_value=stats.rounds, sum_value=stats.seconds_total)
                failures.add_metric(values, stats.failures)
        yield from (info, master, is_leader, lease, healthy, transitions, latency, failures)


def register(candidate: Candidate, registry: CollectorRegistry | None = None) -> None:
    """Export *candidate*'s metrics through *registry*. Idempotent; the
    candidate is dropped from the metrics when it is garbage-collected or
    :func:`unregister` ed.

    :param candidate: the candidate to export.
    :param registry: a ``prometheus_client.CollectorRegistry``; default
        prometheus_client's global ``REGISTRY``.
    :raises ImportError: prometheus-client is not installed; the message
        names the extra to install.

    .. versionadded:: 0.1
    """
    prometheus = _prometheus()
    registry = prometheus.REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = _Collector()
            registry.register(collector)
    collector.add(candidate)


def unregister(candidate: Candidate, registry: CollectorRegistry | None = None) -> bool:
    """Stop exporting *candidate*'s metrics.

    :param candidate: a candidate given to :func:`register`.
    :param registry: the registry it was registered with; default prometheus_client's ``REGISTRY``.
    :returns: True if it was registered.

    .. versionadded:: 0.1
    """
    registry = _prometheus().REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None or not collector.remove(candidate):
            return False
        if collector.empty():
            del _collectors[registry]
            registry.unregister(collector)
    return True


def start_http_server(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> None:
    """Serve ``/metrics`` on *addr*:*port* from a daemon thread
    (``prometheus_client.start_http_server``).

    :param port: the TCP port.
    :param addr: the address to listen on.
    :param registry: what to serve; default prometheus_client's ``REGISTRY``.
    :raises ImportError: prometheus-client is not installed.

    .. versionadded:: 0.1
    """
    prometheus = _prometheus()
    prometheus.start_http_server(port, addr=addr, registry=prometheus.REGISTRY if registry is None else registry)
