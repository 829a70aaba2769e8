"""Django integration: an app for ``INSTALLED_APPS`` that runs one candidate
per serving process, configured by ``settings.CONSUL_LEADER``.

::

    INSTALLED_APPS = [..., "consul_leader.contrib.django"]
    CONSUL_LEADER = {"KEY": "myservice/leader", "ADDRESS": "127.0.0.1:8500", "TTL": 3}

Keys of ``CONSUL_LEADER``: ``KEY`` (required) and any other
:class:`~consul_leader.Candidate` argument in upper case (``IDENTITY``,
``ADDRESS``, ``TOKEN``, ``DATACENTER``, ``VERIFY``, ``CERT``, ``TTL``,
``LOCK_DELAY``, ``LEASE``, ``HEARTBEAT``, ``SESSION_TTL``, ``TERM_LIMIT``,
``TIMEOUT``); ``START`` (see :func:`start_mode`) and ``COMMANDS``, the
management commands that serve (default ``["runserver"]``).
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any, Callable, Collection, List, Mapping, Optional

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured as DjangoImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]

from ...candidate import Candidate
from ...errors import ConfigurationError, ConfigurationTypeError, NotLeader
from .._settings import PerProcess, candidate_from_settings

__all__ = ["ImproperlyConfigured", "NotLeaderMiddleware", "get_candidate", "start", "start_mode"]

SETTING = "CONSUL_LEADER"
START_MODES = ("auto", "ready", "request", "manual")
_EXTRA = ("start", "commands")

_runner: Optional[PerProcess] = None


class ImproperlyConfigured(DjangoImproperlyConfigured, ConfigurationError):  # type: ignore[misc]
    """``settings.CONSUL_LEADER`` is missing or invalid. Both Django's
    ``ImproperlyConfigured`` and :class:`~consul_leader.ConfigurationError`."""


def _setting_name(option: str) -> str:
    return f"{SETTING}[{option.upper()!r}]"


def _read_settings() -> Mapping[str, Any]:
    raw = getattr(settings, SETTING, None)
    if raw is None:
        raise ImproperlyConfigured(f"settings.{SETTING} is missing; add e.g. {SETTING} = "
                                   "{'KEY': 'myservice/leader'} to use consul_leader.contrib.django")
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict with str keys such as 'KEY' and 'TTL', "
                                   f"got {type(raw).__name__}")
    return {k.lower(): v for k, v in raw.items()}


def _runner_from_settings() -> PerProcess:
    values = _read_settings()
    start = values.get("start") or "auto"
    if start not in START_MODES:
        raise ImproperlyConfigured(f"{_setting_name('start')}={start!r}: expected one of "
                                   f"{', '.join(map(repr, START_MODES))}")
    commands = values.get("commands")
    if commands is not None and (isinstance(commands, str) or not all(isinstance(c, str) for c in commands)):
        raise ImproperlyConfigured(f"{_setting_name('commands')} must be a list of management command names, "
                                   f"got {commands!r}")
    try:
        candidate = candidate_from_settings(values, _setting_name, f"settings.{SETTING}", extra=_EXTRA)
    except (ConfigurationError, ConfigurationTypeError) as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return PerProcess(candidate)


def _get_runner() -> PerProcess:
    global _runner
    if _runner is None:
        _runner = _runner_from_settings()
    return _runner


def get_candidate() -> Candidate:
    """The candidate built from ``settings.CONSUL_LEADER`` (one per process;
    it may not be running, see :func:`start_mode`).

    :raises ImproperlyConfigured: the setting is missing or invalid."""
    return _get_runner().candidate


def start(timeout: Optional[float] = None) -> Candidate:
    """Start the candidate in this process if it does not run here yet,
    whatever ``START`` says: from a management command that must do its work
    only on the leader, or from gunicorn's ``post_worker_init`` hook to run
    for election before the first request.

    :param timeout: if given, then wait up to this many seconds for
        leadership (check :meth:`~consul_leader.Candidate.is_leader` after).
    :raises ImproperlyConfigured: the setting is missing or invalid."""
    candidate = _get_runner().ensure_started()
    if timeout is not None:
        candidate.wait_for_leadership(timeout)
    return candidate


def start_mode(start: str, argv: Optional[List[str]], commands: Collection[str] = ("runserver",),
               environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """When this process should start its candidate: ``"ready"`` (in
    ``AppConfig.ready()``), ``"request"`` (on its first request) or None
    (never by itself).

    :param start: the ``START`` setting. ``"auto"`` (default): a management
        command listed in *commands* starts in ``ready()`` (``runserver``
        only in the autoreloader's child, which serves, or with
        ``--noreload``); any other command (``migrate``, ``shell``, ``test``,
        ``check``...) never; a process not run by ``manage.py`` (gunicorn,
        uWSGI, an ASGI server) on its first request, which is safe with
        preloading servers that fork workers after loading the app.
        ``"ready"`` / ``"request"``: like ``"auto"``, but always that moment.
        ``"manual"``: never; call :func:`start`.
    :param argv: the management command line, or None outside ``manage.py``.
    :param commands: the ``COMMANDS`` setting.
    :param environ: the environment (``RUN_MAIN`` marks the autoreloader's child).
    """
    environ = os.environ if environ is None else environ
    if start == "manual":
        return None
    if argv is not None:
        command = argv[1] if len(argv) > 1 else "help"
        if command not in commands:
            return None
        if command == "runserver" and "--noreload" not in argv and environ.get("RUN_MAIN") != "true":
            return None  # the autoreloader's parent only restarts the child that serves
        return "ready" if start == "auto" else start
    return "request" if start == "auto" else start


def _management_argv() -> Optional[List[str]]:
    """The argv of the management command being set up, or None.

    Read from ManagementUtility.execute's frame rather than guessed from
    sys.argv[0], which may be manage.py, django-admin, a project's own script
    or ``python -m django``."""
    from django.core.management import ManagementUtility  # type: ignore[import-untyped]

    code = ManagementUtility.execute.__code__
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            argv = getattr(frame.f_locals.get("self"), "argv", None)
            return list(argv) if isinstance(argv, list) else None
        frame = frame.f_back
    return None


def _on_ready() -> None:
    """Called by the app's ``ready()``: validate the settings in every
    process (so ``manage.py check`` reports them), start where it serves."""
    from django.core.signals import request_started  # type: ignore[import-untyped]

    runner = _get_runner()
    values = _read_settings()
    mode = start_mode(values.get("start") or "auto", _management_argv(), values.get("commands") or ("runserver",))
    if mode == "ready":
        runner.ensure_started()
    elif mode == "request":
        request_started.connect(_on_request_started, weak=False, dispatch_uid="consul_leader.start")


def _on_request_started(sender: Any, **kwargs: Any) -> None:
    _get_runner().ensure_started()


class NotLeaderMiddleware:
    """Turns :class:`~consul_leader.NotLeader`, raised by views decorated
    with ``@leader_only(raise_not_leader=True)``, into a ``503`` JSON answer
    naming the leader, so that a client or a proxy can try elsewhere.

    :param get_response: the next middleware or view.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> Optional[HttpResponse]:
        """Answer 503 for :class:`~consul_leader.NotLeader`; leave other errors alone."""
        if not isinstance(exception, NotLeader):
            return None
        candidate = get_candidate()
        response = JsonResponse({"error": "not the leader", "leader": candidate.leader(), "key": candidate.key},
                                status=503)
        response["Retry-After"] = str(max(1, round(candidate.timing.check_ttl)))
        return response
