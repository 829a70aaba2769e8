"""The requests about the agent's own services and checks (a candidate's
service instance and the TTL check its session is bound to, and what
crashed candidates left): the part of :class:`~consul_leader.client.ConsulClient`
that :mod:`consul_leader.footprint` and the session's heartbeat use.
"""

from __future__ import annotations

from typing import Any

from .transport import Transport, duration, quote

__all__ = ["AgentCalls"]


class AgentCalls:
    """The agent's services and checks, sent through :attr:`_http` (set by
    :class:`~consul_leader.client.ConsulClient`)."""

    _http: Transport

    def register_service(self, service_id: str, name: str, check_id: str, ttl: float, *,
                         deregister_after: float, meta: dict[str, str] | None = None,
                         notes: str = "", check_name: str | None = None) -> None:
        """Register a service instance on the agent with one TTL check,
        already passing (a new check starts critical, and a session cannot
        bind to a critical check). The check belongs to the instance, never
        to the node: a critical node-level check fails every service of the
        node, and this one goes critical for good when its process dies,
        until Consul reaps the instance *deregister_after* seconds later.

        .. versionadded:: 0.2"""
        check = {"CheckID": check_id, "Name": check_name or f"{name} heartbeat", "TTL": duration(ttl),
                 "Status": "passing", "DeregisterCriticalServiceAfter": duration(deregister_after)}
        if notes:
            check["Notes"] = notes
        body: dict[str, Any] = {"ID": service_id, "Name": name, "Meta": meta or {}}
        if ttl:
            body["Check"] = check
        self._http.call("register service", lambda: self._http.request("PUT", "/v1/agent/service/register", body=body),
                   key=name)

    def deregister_service(self, service_id: str, name: str | None = None) -> None:
        """Remove the service instance (and its check) from the agent;
        *name*, the service's, goes into a refusal's ACL rule.

        .. versionadded:: 0.2"""
        self._http.call("deregister service", lambda: self._http.request(
            "PUT", f"/v1/agent/service/deregister/{quote(service_id)}"), key=name)

    def agent_checks(self) -> dict[str, dict[str, Any]]:
        """Every check registered on the agent, by check ID.

        .. versionadded:: 0.2"""
        return dict(self._http.call("list checks", lambda: self._http.request("GET", "/v1/agent/checks").json()))

    def agent_services(self) -> dict[str, dict[str, Any]]:
        """Every service instance registered on the agent, by ID.

        .. versionadded:: 0.2"""
        return dict(self._http.call("list services", lambda: self._http.request("GET", "/v1/agent/services").json()))

    def catalog_instances(self, service: str) -> list[dict[str, Any]]:
        """Every instance of *service* in the catalog, on every node.

        .. versionadded:: 0.2"""
        return list(self._http.call("list services", lambda: self._http.request(
            "GET", f"/v1/catalog/service/{quote(service)}").json() or [], key=service))

    def register_check(self, check_id: str, name: str, ttl: float, notes: str = "") -> None:
        """Register a node-level TTL check on the agent, already passing.
        Only for tools and tests: a candidate's check belongs to a service
        instance (:meth:`register_service`)."""
        body = {"ID": check_id, "Name": name, "TTL": duration(ttl), "Status": "passing"}
        if notes:
            body["Notes"] = notes
        self._http.call("register check", lambda: self._http.request("PUT", "/v1/agent/check/register", body=body))

    def pass_check(self, check_id: str, service: str | None = None) -> None:
        """Mark the TTL check as passing; *service*, the name of the service
        it belongs to, goes into a refusal's ACL rule.

        :raises SessionLost: the agent no longer knows the check (it restarted)."""
        self._http.call("pass check", lambda: self._http.request("PUT", f"/v1/agent/check/pass/{quote(check_id)}"),
                   missing=f"the agent no longer has check {check_id!r}", key=service)

    def deregister_check(self, check_id: str) -> None:
        """Remove the check from the agent."""
        self._http.call("deregister check", lambda: self._http.request(
            "PUT", f"/v1/agent/check/deregister/{quote(check_id)}"))
