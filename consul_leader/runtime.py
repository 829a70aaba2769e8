"""Whether this process can run a candidate: its election, heartbeat and
lease watchdog need real operating-system threads that the process's own
code cannot starve.

Two common set-ups do not give them:

* gevent (gunicorn's ``gevent`` worker, Celery's ``-P gevent`` pool, any
  ``gevent.monkey.patch_all()``) and eventlet turn ``threading`` into
  greenlets: the heartbeat then runs only when the application's greenlets
  yield, and one CPU-bound request or a blocking C call holds it past the
  lease;
* uWSGI without ``--enable-threads`` (or ``enable-threads = true``) never
  runs a thread the application starts.

:func:`check_threads_usable` detects both and says what to do instead.

.. versionadded:: 0.2
"""

from __future__ import annotations

import sys
from typing import Optional

from .errors import ConfigurationError

__all__ = ["check_threads_usable", "threads_problem"]


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False  # gevent patches only after importing it: not imported, not patched
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:  # an unexpected gevent: better to let the candidate run than to refuse wrongly
        return False


def _eventlet_patched() -> bool:
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None:
        return False
    try:
        return bool(patcher.is_monkey_patched("thread"))
    except Exception:
        return False


def threads_problem() -> Optional[str]:
    """What keeps a candidate from running in this process, or None."""
    if _gevent_patched():
        return ("gevent has monkey-patched threading in this process (gunicorn's gevent worker, Celery's gevent "
                "pool, gevent.monkey.patch_all()): the candidate's heartbeat would run as a greenlet, and a "
                "CPU-bound greenlet or a blocking call could hold it past the lease, so two processes could both "
                "believe they lead. Run the candidate in a process without monkey-patching: gunicorn's sync or "
                "gthread worker, Celery's prefork or threads pool, a separate process for the leader-only work, "
                "or `consul-leader run -- CMD` around that work")
    if _eventlet_patched():
        return ("eventlet has monkey-patched threading in this process: the candidate's heartbeat would run as a "
                "green thread that any busy green thread can starve past the lease. Run the candidate in a "
                "process without monkey-patching (gunicorn's sync or gthread worker, Celery's prefork pool), or "
                "use `consul-leader run -- CMD` around the leader-only work")
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None and not getattr(uwsgi, "has_threads", True):
        return ("this process runs under uWSGI without threads: uWSGI never runs the candidate's election "
                "thread, so it would never lead (or never notice losing the lock). Start uWSGI with "
                "--enable-threads (or `enable-threads = true` in its ini file)")
    return None


def check_threads_usable() -> None:
    """Raise if this process cannot run a candidate's threads.

    :raises ConfigurationError: gevent or eventlet monkey-patched
        ``threading``, or uWSGI runs without ``--enable-threads``; the
        message says what to do."""
    problem = threads_problem()
    if problem is not None:
        raise ConfigurationError(f"consul-leader cannot run a candidate here: {problem}")
