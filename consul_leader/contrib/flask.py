"""Flask integration: one candidate per worker process, configured from
``app.config``.

::

    app = Flask(__name__)
    app.config["CONSUL_LEADER_KEY"] = "myservice/leader"
    leader = LeaderElection(app)

Settings (all but the key optional): ``CONSUL_LEADER_KEY``, and
``CONSUL_LEADER_`` + any :class:`~consul_leader.Candidate` argument in upper
case (``ADDRESS``, ``TOKEN``, ``DATACENTER``, ``VERIFY``, ``CERT``, ``TTL``,
``LOCK_DELAY``, ``LEASE``, ``HEARTBEAT``, ``SESSION_TTL``, ``TERM_LIMIT``,
``TIMEOUT``, ``IDENTITY``); ``CONSUL_LEADER_START``: ``"request"`` (default),
``"init"`` or ``"manual"``; ``CONSUL_LEADER_HEALTH_URL``: where to serve the
leader status as JSON (default None: not served); ``CONSUL_LEADER_READY_URL``
and ``CONSUL_LEADER_LIVE_URL``: where to answer a readiness probe (``200`` on
the leader, ``503`` elsewhere) and a liveness probe (``200`` while the
heartbeat is current), e.g. ``"/readyz"`` and ``"/livez"`` (default: not
served; see :mod:`consul_leader.contrib.readiness`).

Why the candidate starts on the first request by default: with ``gunicorn
--preload`` the app is built in the master process, which then forks the
workers. A candidate started there would make the master (which serves no
request) a contender, and the workers would inherit nothing of it (a candidate
resets itself in a forked child). Starting on each worker's first request
works with and without preloading; to start a worker before any request, call
:meth:`LeaderElection.start` from gunicorn's ``post_worker_init`` hook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from ..candidate import Candidate
from ..errors import ConfigurationError
from ._settings import PerProcess, candidate_from_settings, lowered
from .readiness import live_status, ready_status

__all__ = ["LeaderElection"]

_EXTENSION = "consul_leader"
_START_MODES = ("request", "init", "manual")


@dataclass
class _AppState:
    runner: PerProcess
    start: str


class LeaderElection:
    """The Flask extension: ``LeaderElection(app)`` or ``init_app(app)``.

    :param app: the application to set up now; or call :meth:`init_app` later.

    .. versionadded:: 0.1
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``CONSUL_LEADER_*`` settings of *app*, build its
        candidate, and arrange for it to start in each process that serves
        requests.

        :raises ConfigurationError: a setting is missing, unknown or invalid;
            the message names it."""
        values = lowered(app.config, "CONSUL_LEADER_")
        start = values.get("start") or "request"
        if start not in _START_MODES:
            raise ConfigurationError(f"CONSUL_LEADER_START={start!r} in app.config: expected one of "
                                     f"{', '.join(map(repr, _START_MODES))}")
        candidate = candidate_from_settings(values, lambda option: f"CONSUL_LEADER_{option.upper()}", "app.config",
                                            extra=("start", "health_url", "ready_url", "live_url"))
        state = _AppState(PerProcess(candidate), start)
        app.extensions[_EXTENSION] = state
        if start != "manual":
            @app.before_request
            def start_in_this_process() -> None:
                state.runner.ensure_started()

        if start == "init":
            state.runner.ensure_started()
        urls = [(values.get("health_url"), "leader", _leader_status),
                (values.get("ready_url"), "readyz", _ready), (values.get("live_url"), "livez", _live)]
        if any(url for url, _, _ in urls):
            blueprint = Blueprint("consul_leader", __name__)
            for url, endpoint, view in urls:
                if url:
                    blueprint.add_url_rule(url, endpoint, view)
            app.register_blueprint(blueprint)

    def candidate_for(self, app: Optional[Flask] = None) -> Candidate:
        """The candidate of *app* (default: the current app).

        :raises RuntimeError: *app* was not set up with :meth:`init_app`."""
        return _state(app).runner.candidate

    @property
    def candidate(self) -> Candidate:
        """The candidate of the current app."""
        return self.candidate_for()

    def start(self, app: Optional[Flask] = None) -> Candidate:
        """Start the candidate of *app* in this process if not yet started
        here (any ``CONSUL_LEADER_START``); e.g. from gunicorn's
        ``post_worker_init`` hook, or with ``"manual"``."""
        return _state(app).runner.ensure_started()

    def status(self, app: Optional[Flask] = None) -> Dict[str, Any]:
        """What the health URL answers: this process's view of the election."""
        candidate = self.candidate_for(app)
        return {"key": candidate.key, "identity": candidate.identity, "pid": os.getpid(),
                "running": candidate.running, "is_leader": candidate.is_leader(), "leader": candidate.leader(),
                "fencing_token": candidate.fencing_token}


def _state(app: Optional[Flask]) -> _AppState:
    app = app if app is not None else current_app
    state = app.extensions.get(_EXTENSION)
    if not isinstance(state, _AppState):
        raise RuntimeError(f"the Flask app {app.name!r} has no LeaderElection; call LeaderElection(app) "
                           "or init_app(app) first")
    return state


def _leader_status() -> ResponseReturnValue:
    return jsonify(LeaderElection().status())


def _ready() -> ResponseReturnValue:
    status, body = ready_status(_state(None).runner.candidate)
    return jsonify(body), status


def _live() -> ResponseReturnValue:
    status, body = live_status(_state(None).runner.candidate)
    return jsonify(body), status
