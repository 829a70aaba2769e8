"""Leader election for ordinary synchronous Python code, on HashiCorp Consul.

::

    from consul_leader import Candidate, leader_only

    Candidate("service/beat/leader").start()

    @leader_only
    def send_reports():
        ...
"""

import logging as _logging

from .candidate import Candidate, Health, LeadershipEvent, stop_on_signals
from .config import ConsulConfig
from .decorators import get_default, is_leader, leader_only, on_deposed, on_elected, set_default
from .elector import Candidacy, Elector
from .errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ConsulLeaderError,
    ConsulTLSError,
    ConsulUnavailable,
    LockHeld,
    NoClusterLeader,
    NotLeader,
    NotRunning,
    PermissionDenied,
    RequestRejected,
    SessionLost,
)
from .events import EventKind, Reason
from .follower import Follower, LeaderInfo
from .roster import Contender
from .session import Timing
from .signals import deposed, elected, election_error, leader_changed

# A library logs; the application decides where it goes.
_logging.getLogger("consul_leader").addHandler(_logging.NullHandler())

# The one place the version is written: setup.cfg reads it (attr:), the
# docs and `consul-leader --version` import it, and tests/test_packaging.py
# holds it to the top heading of CHANGES.rst.
__version__ = "0.2.0.dev0"

__all__ = [
    "Candidacy",
    "Candidate",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ConsulConfig",
    "ConsulLeaderError",
    "ConsulTLSError",
    "ConsulUnavailable",
    "Contender",
    "Elector",
    "EventKind",
    "Follower",
    "Health",
    "LeaderInfo",
    "LeadershipEvent",
    "LockHeld",
    "NoClusterLeader",
    "NotLeader",
    "NotRunning",
    "PermissionDenied",
    "Reason",
    "RequestRejected",
    "SessionLost",
    "Timing",
    "deposed",
    "elected",
    "election_error",
    "get_default",
    "is_leader",
    "leader_changed",
    "leader_only",
    "on_deposed",
    "on_elected",
    "set_default",
    "stop_on_signals",
]
