"""``manage.py leader_status``: print who leads the election configured in
``settings.CONSUL_LEADER``. Exits as ``consul-leader status`` does: 0 when
someone leads, 3 when nobody does, 69 when Consul cannot be read, 77 when
the ACL token is refused (see :mod:`consul_leader.cli.codes`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser  # type: ignore[import-untyped]

from consul_leader.cli.codes import EXIT_NO_LEADER, EXIT_PERMISSION, EXIT_UNAVAILABLE
from consul_leader.contrib import django as integration
from consul_leader.errors import ConsulLeaderError, PermissionDenied
from consul_leader.follower import LeaderInfo

__all__ = ["Command"]


class Command(BaseCommand):  # type: ignore[misc]
    """Reads the leader key once; this process does not run for election."""

    help = "Print who leads the consul-leader election of settings.CONSUL_LEADER."

    def add_arguments(self, parser: CommandParser) -> None:
        """``--json`` for a machine-readable answer."""
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the leader's identity, or that nobody leads (and exit with 3)."""
        candidate = integration.get_candidate()
        try:
            _, entry = candidate.client.get_key(candidate.key)
        except ConsulLeaderError as exc:
            code = EXIT_PERMISSION if isinstance(exc, PermissionDenied) else EXIT_UNAVAILABLE
            raise CommandError(f"cannot read {candidate.key!r}: {exc}", returncode=code) from None
        info = LeaderInfo.from_entry(entry)
        if options["json"]:
            self.stdout.write(json.dumps({"key": candidate.key, "leader": info.identity, "session": info.session,
                                          "since": info.since, "fencing_token": info.modify_index}))
        elif info.identity is None:
            self.stdout.write(f"nobody leads {candidate.key!r}")
        else:
            since = "" if info.since is None else \
                f", since {datetime.fromtimestamp(info.since, timezone.utc).isoformat(timespec='seconds')}"
            self.stdout.write(f"{info.identity} leads {candidate.key!r} (fencing token {info.modify_index}{since})")
        if info.identity is None:
            self.stdout.flush()
            raise SystemExit(EXIT_NO_LEADER)
