"""Readiness and liveness views for Django: ``readyz`` answers ``200`` on the
leader and ``503`` elsewhere, ``livez`` ``200`` while this process's
election runs with a current heartbeat (see
:mod:`consul_leader.contrib.readiness`). Include them in the URLconf::

    urlpatterns = [..., path("", include("consul_leader.contrib.django.urls"))]

.. versionadded:: 0.2
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse  # type: ignore[import-untyped]

from ..readiness import Status, live_status, ready_status
from . import _get_runner

__all__ = ["livez", "readyz"]


def _answer(request: HttpRequest, status: Status) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    response = JsonResponse(status[1], status=status[0])
    response["Cache-Control"] = "no-store"
    return response


def readyz(request: HttpRequest) -> HttpResponse:
    """``200`` with a small JSON body while this process leads, ``503``
    otherwise (also while this process has not started its candidate,
    see :func:`~consul_leader.contrib.django.start_mode`)."""
    return _answer(request, ready_status(_get_runner().candidate))


def livez(request: HttpRequest) -> HttpResponse:
    """``200`` while this process's election runs and its heartbeat is
    current, ``503`` otherwise."""
    return _answer(request, live_status(_get_runner().candidate))
