"""Throwaway real Consul agents for tests and demos.

:class:`ConsulAgent` starts ``consul agent -dev`` on free loopback ports,
waits until it has a Raft leader, and stops it, leaving nothing behind::

    with ConsulAgent() as agent:
        candidate = Candidate("app/leader", address=agent.address)

:class:`ConsulCluster` starts several servers and client agents, on
loopback or, with ``hosts=True``, each in its own network namespace so that a
test can cut a host off the network (:meth:`ConsulCluster.partition`).

The ``consul`` binary is found as ``$CONSUL_BIN`` or on ``PATH``.
"""

from __future__ import annotations

from .agent import ConsulAgent, find_consul, free_ports
from .cluster import ClusterAgent, ConsulCluster
from .faults import check_id, delete_key, destroy_session, overwrite_key, session_id
from .hosts import HOST_NETWORKS, Host, hosts_supported

__all__ = ["HOST_NETWORKS", "ClusterAgent", "ConsulAgent", "ConsulCluster", "Host", "check_id", "delete_key",
           "destroy_session", "find_consul", "free_ports", "hosts_supported", "overwrite_key", "session_id"]
