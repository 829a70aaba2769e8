"""The Django app: settings.CONSUL_LEADER, a candidate only in serving
processes (the runserver child, not its autoreloader parent, nor migrate,
shell, check...), @leader_only in views, signal receivers and management
commands, and ``manage.py leader_status``.

In-process with Django's test client, and in real processes: ``manage.py
runserver`` with its autoreloader, ``leader_status``, ``send_report``, and
(slow) a gunicorn --preload fleet. The project is tests/djangoproject, the
one docs/integrations/django.rst shows."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests
from chaos.procs import wait_until

from consul_leader import Candidate, get_default, set_default
from consul_leader.cli import EXIT_NO_LEADER, EXIT_UNAVAILABLE
from consul_leader.testing import ConsulAgent, free_ports

from conftest import HERE, PYTHON, python_env

PROJECT = os.path.join(HERE, "djangoproject")


@pytest.fixture(scope="module")
def django_project(consul_agent: ConsulAgent) -> Iterator[Dict[str, Any]]:
    """Django set up in this process with the test project; the settings
    read LEADER_KEY and CONSUL_HTTP_ADDR when Django loads them."""
    import django

    key = f"test/django-in-process-{os.getpid()}/leader"
    saved = {name: os.environ.get(name) for name in ("LEADER_KEY", "CONSUL_HTTP_ADDR", "DJANGO_SETTINGS_MODULE")}
    os.environ.update(LEADER_KEY=key, CONSUL_HTTP_ADDR=consul_agent.address,
                      DJANGO_SETTINGS_MODULE="leaderproject.settings")
    sys.path.insert(0, PROJECT)
    set_default(None)  # earlier tests may leave a stopped default candidate behind
    try:
        django.setup()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    from consul_leader.contrib.django import get_candidate

    candidate = get_candidate()
    yield {"key": key, "candidate": candidate, "running_after_setup": candidate.running}
    candidate.stop()
    set_default(None)


@pytest.mark.parametrize("start, argv, environ, expected", [
    ("auto", ["manage.py", "runserver"], {}, None),  # the autoreloader's parent
    ("auto", ["manage.py", "runserver"], {"RUN_MAIN": "true"}, "ready"),  # its child, which serves
    ("auto", ["manage.py", "runserver", "--noreload"], {}, "ready"),
    ("auto", ["manage.py", "migrate"], {}, None),
    ("auto", ["manage.py", "makemigrations"], {}, None),
    ("auto", ["manage.py", "shell"], {}, None),
    ("auto", ["manage.py", "test"], {"RUN_MAIN": "true"}, None),
    ("auto", ["manage.py", "check"], {}, None),
    ("auto", ["manage.py"], {}, None),
    ("auto", None, {}, "request"),  # gunicorn, uWSGI, an ASGI server: safe with --preload
    ("ready", None, {}, "ready"),
    ("request", ["manage.py", "runserver", "--noreload"], {}, "request"),
    ("manual", ["manage.py", "runserver", "--noreload"], {}, None),
    ("manual", None, {}, None),
])
def test_only_serving_processes_start_the_candidate(start: str, argv: Optional[List[str]],
                                                    environ: Dict[str, str], expected: Optional[str]) -> None:
    from consul_leader.contrib.django import start_mode

    assert start_mode(start, argv, ("runserver",), environ) == expected


@pytest.mark.parametrize("setting, words", [
    (None, ["settings.CONSUL_LEADER is missing"]),
    ("myservice/leader", ["must be a dict"]),
    ({"TTL": 3}, ["CONSUL_LEADER['KEY'] is required"]),
    ({"KEY": "a/leader", "TTLL": 3}, ["CONSUL_LEADER['TTLL']", "not a consul-leader setting", "CONSUL_LEADER['TTL']"]),
    ({"KEY": "a/leader", "TTL": -1}, ["settings.CONSUL_LEADER", "ttl", "CONSUL_LEADER['TTL']=-1"]),
    ({"KEY": "a/leader", "START": "now"}, ["CONSUL_LEADER['START']='now'", "'auto'"]),
    ({"KEY": "a/leader", "COMMANDS": "runserver"}, ["CONSUL_LEADER['COMMANDS']", "list"]),
])
def test_bad_settings_raise_improperly_configured_naming_the_setting(django_project: Dict[str, Any], setting: Any,
                                                                      words: List[str]) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from consul_leader import ConfigurationError
    from consul_leader.contrib.django import _runner_from_settings

    with override_settings(CONSUL_LEADER=setting), pytest.raises(ImproperlyConfigured) as info:
        _runner_from_settings()
    assert isinstance(info.value, ConfigurationError)
    for word in words:
        assert word in str(info.value)


def test_the_candidate_starts_on_the_first_request_in_a_non_manage_process(django_project: Dict[str, Any]) -> None:
    from django.test import Client

    candidate = django_project["candidate"]
    assert django_project["running_after_setup"] is False  # django.setup() alone runs for nothing
    status = Client().get("/status/").json()
    assert status["running"] is True and status["pid"] == os.getpid() and candidate.running
    assert candidate.wait_for_leadership(15)


def test_leader_only_view_and_signal_receiver_follow_leadership(django_project: Dict[str, Any],
                                                                make_candidate: Callable[..., Candidate]) -> None:
    from django.test import Client

    client = Client()
    client.get("/status/")
    candidate = django_project["candidate"]
    assert get_default() is candidate
    assert candidate.wait_for_leadership(15)
    assert client.get("/report/").json() == {"sent_by": candidate.identity}
    assert "while-leading" in client.get("/poke/?note=while-leading").json()["received"]

    other = make_candidate(django_project["key"], ttl=2).start()
    candidate.resign()
    assert other.wait_for_leadership(15)
    answer = client.get("/report/")
    assert answer.status_code == 503 and answer.json()["error"] == "not the leader"
    wait_until(lambda: client.get("/report/").json()["leader"] == other.identity, 15, "the 503 names the leader")
    assert "while-not" not in client.get("/poke/?note=while-not").json()["received"]

    other.stop()
    assert candidate.wait_for_leadership(15)
    assert client.get("/report/").status_code == 200


# -- real processes -----------------------------------------------------------------------------------------


def manage(env: Dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def project_env(consul_agent: ConsulAgent, key: str) -> Dict[str, str]:
    env = python_env()
    env.update(LEADER_KEY=key, CONSUL_HTTP_ADDR=consul_agent.address)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("RUN_MAIN", None)
    return env


def test_shell_does_not_run_for_election_and_check_reports_bad_settings(project_env: Dict[str, str]) -> None:
    shell = manage(project_env, "shell", "-c",
                   "from consul_leader.contrib.django import get_candidate; print('running', get_candidate().running)")
    assert shell.returncode == 0, shell.stderr
    assert "running False" in shell.stdout and "runs for leadership" not in shell.stderr

    bad = manage({**project_env, "LEADER_KEY": "/leading/slash"}, "check")
    assert bad.returncode != 0
    assert "ImproperlyConfigured" in bad.stderr and "CONSUL_LEADER['KEY']='/leading/slash'" in bad.stderr


def test_runserver_child_leads_commands_defer_to_it_and_take_over_when_it_dies(project_env: Dict[str, str],
                                                                               consul_agent: ConsulAgent,
                                                                               key: str) -> None:
    port = free_ports(1)[0]
    server = subprocess.Popen([PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=PROJECT, env=project_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def leading_status() -> Optional[Dict[str, Any]]:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/status/", timeout=2).json()
            except (requests.RequestException, ValueError):
                return None
            return status if status["is_leader"] else None

        status = wait_until(leading_status, 60, "runserver serves and leads", every=0.2)
        # The autoreloader's parent (the process we started) restarts the
        # child; only the child, which serves, runs for election.
        assert status["pid"] != server.pid
        assert status["pid"] in [int(p) for p in os.listdir("/proc") if p.isdigit()]
        sessions = [s["Name"] for s in requests.get(f"{consul_agent.url}/v1/session/list", timeout=5).json()
                    if s["Name"].startswith(f"consul-leader {key} ")]
        assert sessions == [f"consul-leader {key} {status['identity']}"]
        assert requests.get(f"http://127.0.0.1:{port}/report/", timeout=5).json() == {"sent_by": status["identity"]}

        shown = manage(project_env, "leader_status")
        assert shown.returncode == 0 and shown.stdout.startswith(f"{status['identity']} leads {key!r}")
        skipped = manage(project_env, "send_report", "--wait", "1")
        assert skipped.returncode == 0 and skipped.stdout.strip() == "skipped: another process leads"
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # a crash: the lock stays until the check's TTL runs out
        server.wait()
    sent = manage(project_env, "send_report", "--wait", "30")
    assert sent.returncode == 0 and sent.stdout.startswith(f"report sent by {socket.gethostname()}:"), sent.stderr
    assert status["identity"] not in sent.stdout
    nobody = manage(project_env, "leader_status")  # the command released on exit
    assert "nobody leads" in nobody.stdout
    assert nobody.returncode == EXIT_NO_LEADER  # as consul-leader status: one table of exit codes


def test_leader_status_exits_as_consul_leader_status_when_consul_is_unreachable(
        project_env: Dict[str, str]) -> None:
    project_env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    unreachable = manage(project_env, "leader_status")
    assert unreachable.returncode == EXIT_UNAVAILABLE, unreachable.stderr
    assert "cannot read" in unreachable.stderr


@pytest.mark.slow
def test_gunicorn_preload_fleet_of_django_workers_has_exactly_one_leader(project_env: Dict[str, str]) -> None:
    from test_flask import Fleet

    fleet = Fleet("leaderproject.wsgi", 3, project_env, PROJECT)
    try:
        first = wait_until(lambda: fleet.one_leader("/status/"), 60, "one leader among 3 Django workers", every=0.2)
        assert first["pid"] in fleet.worker_pids()
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: (s := fleet.one_leader("/status/")) and s["pid"] != first["pid"], 60,
                   "a new single leader after SIGKILL of the leading worker", every=0.2)
    except BaseException:
        print(fleet.output())
        raise
    finally:
        fleet.stop()
