"""Deterministic simulation of elections: a model of Consul
(:mod:`.consul`), a seeded scheduler with simulated processes that make
the engine's own decisions (:mod:`.world`), and runs of many fault
schedules checked by :mod:`consul_leader.testing.checker`
(:mod:`.run`). See ``docs/simulation.rst``."""

from __future__ import annotations

from .consul import SERF_HEALTH, ConsulModel, ManualTimers, ModelError, NoClusterLeader, Timers, TxnOp

__all__ = ["SERF_HEALTH", "ConsulModel", "ManualTimers", "ModelError", "NoClusterLeader", "Timers", "TxnOp"]
