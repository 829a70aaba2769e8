"""The Django app of consul-leader (``"consul_leader.contrib.django"`` in
``INSTALLED_APPS``)."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["ConsulLeaderConfig"]


class ConsulLeaderConfig(AppConfig):  # type: ignore[misc]
    """Validates ``settings.CONSUL_LEADER`` and starts the candidate where
    this process serves (see :func:`consul_leader.contrib.django.start_mode`)."""

    name = "consul_leader.contrib.django"
    label = "consul_leader"
    verbose_name = "consul-leader"

    def ready(self) -> None:
        """Check the settings; start the candidate, now or on the first request."""
        from . import _on_ready

        _on_ready()
