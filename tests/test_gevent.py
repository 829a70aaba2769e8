"""gevent and uWSGI: a process whose threads are greenlets (gevent's
monkey-patching, as in gunicorn's gevent worker and Celery's gevent pool)
or that never runs threads (uWSGI without --enable-threads) cannot keep a
lease; the candidate refuses to start there, with an error that says what
to do, instead of leading unreliably.

Real gevent in child processes; uWSGI is not installed here, so its check
runs against the module attribute uWSGI itself sets (``uwsgi.has_threads``)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from typing import Any, Dict

from fleet import Server

from consul_leader.testing import ConsulAgent, free_ports

from conftest import PYTHON, ROOT, python_env, wait_until

EXAMPLES = os.path.join(ROOT, "docs", "examples")


def run(code: str, **env: str) -> Dict[str, Any]:
    """Run *code* in a fresh interpreter; it prints one JSON object."""
    out = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], env={**python_env(), **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


CHECK = """
    {patch}
    import json
    from consul_leader import ConfigurationError
    from consul_leader.runtime import check_threads_usable
    try:
        check_threads_usable()
        print(json.dumps({{"refused": None}}))
    except ConfigurationError as exc:
        print(json.dumps({{"refused": str(exc)}}))
"""


def test_threads_are_usable_without_monkey_patching() -> None:
    assert run(CHECK.format(patch="import gevent"))["refused"] is None


def test_gevent_monkey_patching_is_refused_with_what_to_do() -> None:
    refused = run(CHECK.format(patch="from gevent import monkey; monkey.patch_all()"))["refused"]
    assert refused is not None
    for words in ("gevent", "monkey-patched", "lease", "gthread", "prefork", "consul-leader run"):
        assert words in refused, (words, refused)


def test_uwsgi_without_threads_is_refused_with_what_to_do() -> None:
    code = 'import sys, types; sys.modules["uwsgi"] = types.SimpleNamespace(has_threads={has_threads})'
    refused = run(CHECK.format(patch=code.format(has_threads=False)))["refused"]
    assert refused is not None and "--enable-threads" in refused
    assert run(CHECK.format(patch=code.format(has_threads=True)))["refused"] is None


START = """
    from gevent import monkey; monkey.patch_all()
    import json, os
    from consul_leader import Candidate, ConfigurationError
    candidate = Candidate(os.environ["LEADER_KEY"], ttl=1)
    try:
        candidate.start()
        print(json.dumps({"refused": None, "running": candidate.running}))
        candidate.stop()
    except ConfigurationError as exc:
        print(json.dumps({"refused": str(exc), "running": candidate.running}))
"""


def test_a_candidate_refuses_to_start_under_gevent(consul_agent: ConsulAgent, key: str) -> None:
    result = run(START, LEADER_KEY=key, CONSUL_HTTP_ADDR=consul_agent.address)
    assert "gevent" in result["refused"] and not result["running"]


def test_gunicorns_gevent_worker_reports_the_refusal(consul_agent: ConsulAgent, key: str) -> None:
    """The Flask example in gunicorn's gevent worker: the first request
    starts the candidate, which the integration refuses; the error names
    gevent (the integrations check before starting, whatever start() does)."""
    port = free_ports(1)[0]
    server = Server([PYTHON, "-m", "gunicorn", "-k", "gevent", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                     "flask_app:create_app()"], port,
                    {"FLASK_CONSUL_LEADER_KEY": key, "CONSUL_HTTP_ADDR": consul_agent.address,
                     "FLASK_CONSUL_LEADER_TTL": "1"}, cwd=EXAMPLES)
    try:
        wait_until(lambda: server.get("/leader")[0] != 0, 60, "gunicorn answers")
        status, body = server.get("/readyz")
        assert status == 500, (status, body)
        wait_until(lambda: "monkey-patched" in server.output(), 10, "the refusal in the log")
    finally:
        server.stop()
