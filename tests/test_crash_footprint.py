"""A crash leaves nothing in Consul that harms the node, and nothing at all
once Consul's reaper (or the next candidate) has been by.

One agent carries an ordinary service ``web``. Three processes that hold a
lock are killed with SIGKILL: a library candidate, a ``consul-leader run``
supervisor and a gunicorn worker. ``web`` must stay passing the whole time,
and within the reap window (60 s) plus Consul's reaper interval (about
30 s) no instance, check or session of the dead processes may remain on the
agent or in the catalog. On a second agent, a node-level
``consul-leader-*`` check of the kind 0.1 registered, left critical by a
crash (it fails every service of that node), is removed by a live
candidate.

The reap window is only a wait, so the scene is set at the start of the run
(``runs_first``) and checked at its end (``runs_last``): the rest of the
suite runs meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Set

import pytest
import requests
from security_helpers import acl_agent, documented_policy, make_token, node_name

from consul_leader import Candidate, elected
from consul_leader.testing import ConsulAgent, free_ports

from conftest import PYTHON, python_env, wait_until

#: DeregisterCriticalServiceAfter (Consul's least) plus its reaper's interval
#: and a margin for a loaded machine.
REAP_BOUND = 60 + 30 + 30

CANDIDATE = """
import sys, time
from consul_leader import Candidate, elected
c = Candidate(sys.argv[1], ttl=1).start()
c.wait_for_leadership()
print("leading", flush=True)
time.sleep(1000)
"""

GUNICORN_APP = """
import logging
import os
from consul_leader import Candidate, elected
candidate = Candidate(os.environ["FOOTPRINT_KEY"], ttl=1).start()

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(candidate.is_leader()).encode()]
"""


@dataclass
class Scene:
    agent: ConsulAgent
    legacy_agent: ConsulAgent
    legacy_check: str
    killed_at: float = 0.0
    # Per victim: the pid, and what it had in Consul before it was killed.
    victims: Dict[str, int] = field(default_factory=dict)
    instances: Dict[str, Set[str]] = field(default_factory=dict)
    sessions: Dict[str, Set[str]] = field(default_factory=dict)
    web_failed_at: List[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def get(self, path: str) -> object:
        """GET *path* from the agent, as JSON; None when it answers 404."""
        response = requests.get(f"{self.agent.url}{path}", timeout=5)
        return None if response.status_code == 404 else response.json()

    def footprint_of(self, pid: int) -> Set[str]:
        services = self.get("/v1/agent/services")
        assert isinstance(services, dict)
        return {sid for sid, s in services.items() if (s.get("Meta") or {}).get("pid") == str(pid)}

    def left_of(self, victim: str) -> List[str]:
        """What of *victim* is still anywhere: agent, catalog, sessions."""
        ids = self.instances[victim]
        left = []
        agent_services = self.get("/v1/agent/services")
        agent_checks = self.get("/v1/agent/checks")
        catalog = self.get("/v1/catalog/service/consul-leader")
        health = self.get("/v1/health/checks/consul-leader")
        sessions = {s["ID"] for s in self.get("/v1/session/list")}  # type: ignore[attr-defined]
        assert isinstance(agent_services, dict) and isinstance(agent_checks, dict)
        assert isinstance(catalog, list) and isinstance(health, list)
        left += [f"agent service {i}" for i in ids if i in agent_services]
        left += [f"agent check {i}" for i in ids if i in agent_checks]
        left += [f"catalog instance {s['ServiceID']}" for s in catalog if s["ServiceID"] in ids]
        left += [f"catalog check {c['CheckID']}" for c in health if c["CheckID"] in ids]
        left += [f"session {s}" for s in self.sessions[victim] & sessions]
        return left

    def watch_web(self) -> None:
        while not self.stop.wait(0.25):
            try:
                passing = self.get("/v1/health/service/web?passing")
            except requests.RequestException:
                continue
            if not passing:
                self.web_failed_at.append(time.monotonic())


def sessions_bound_to(scene: Scene, check_ids: Set[str]) -> Set[str]:
    found = set()
    for s in scene.get("/v1/session/list"):  # type: ignore[attr-defined]
        bound = set(s.get("Checks") or []) | set(s.get("NodeChecks") or [])
        bound |= {c.get("ID") for c in s.get("ServiceChecks") or []}
        if bound & check_ids:
            found.add(s["ID"])
    return found


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("footprint")
    with ConsulAgent() as agent, ConsulAgent() as legacy_agent:
        url = agent.url
        requests.put(f"{url}/v1/agent/service/register", json={
            "Name": "web", "ID": "web-1", "Port": 8080,
            "Check": {"CheckID": "web-alive", "TTL": "1h", "Status": "passing"}}, timeout=5).raise_for_status()
        # What 0.1 left after a crash: a node-level TTL check, critical.
        legacy = f"consul-leader-{uuid.uuid4().hex[:16]}"
        requests.put(f"{legacy_agent.url}/v1/agent/check/register", json={
            "ID": legacy, "Name": "consul-leader: old", "TTL": "1s"}, timeout=5).raise_for_status()
        scene = Scene(agent, legacy_agent, legacy)
        env = python_env()
        env["CONSUL_HTTP_ADDR"] = agent.address
        procs: List[subprocess.Popen] = []

        def spawn(argv: List[str], **kw: object) -> subprocess.Popen:
            proc = subprocess.Popen(argv, env=kw.pop("env", env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True, **kw)  # type: ignore[call-overload]
            procs.append(proc)
            return proc

        keys = {name: f"footprint/{name}/{uuid.uuid4().hex[:8]}" for name in ("library", "cli", "gunicorn")}
        library = spawn([PYTHON, "-c", CANDIDATE, keys["library"]])
        cli = spawn([PYTHON, "-m", "consul_leader.cli", "run", "--ttl", "1s", keys["cli"], "--", "sleep", "1000"])
        (tmp / "footprint_app.py").write_text(textwrap.dedent(GUNICORN_APP))
        genv = dict(env, FOOTPRINT_KEY=keys["gunicorn"])
        port = free_ports(1)[0]
        master = spawn([PYTHON, "-m", "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                        "footprint_app:app"], env=genv, cwd=str(tmp))
        # A live candidate that outlasts the reap window, for the old check.
        survivor = Candidate(f"footprint/survivor/{uuid.uuid4().hex[:8]}", address=legacy_agent.address,
                             ttl=1).start()

        def holder(key: str) -> int:
            entry = scene.get(f"/v1/kv/{key}")
            if not isinstance(entry, list) or not entry[0].get("Session"):
                return 0
            info = scene.get(f"/v1/session/info/{entry[0]['Session']}")
            assert isinstance(info, list)
            checks = set(info[0].get("Checks") or []) | set(info[0].get("NodeChecks") or [])
            services = scene.get("/v1/agent/services")
            assert isinstance(services, dict)
            return next((int(s["Meta"]["pid"]) for sid, s in services.items() if sid in checks), 0)

        try:
            for name, key in keys.items():
                wait_until(lambda key=key: scene.get(f"/v1/kv/{key}") and holder(key), 60, f"{name} leads")
                pid = holder(key)
                scene.victims[name] = pid
                scene.instances[name] = scene.footprint_of(pid)
                scene.sessions[name] = sessions_bound_to(scene, scene.instances[name])
                assert scene.instances[name] and scene.sessions[name], name
            assert scene.victims["library"] == library.pid and scene.victims["cli"] == cli.pid
            assert scene.victims["gunicorn"] != master.pid
            watcher = threading.Thread(target=scene.watch_web, daemon=True)
            watcher.start()
            for pid in scene.victims.values():
                os.kill(pid, signal.SIGKILL)
            scene.killed_at = time.monotonic()
            yield scene
        finally:
            scene.stop.set()
            survivor.stop()
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


@pytest.mark.runs_first
def test_killed_candidates_leave_web_passing_once_their_checks_are_critical(scene: Scene) -> None:
    wait_until(lambda: time.monotonic() - scene.killed_at > 8, 10, "the checks' TTL")
    assert scene.web_failed_at == [], "web left passing after the kills"


def wait_reaped(scene: Scene, victim: str) -> None:
    deadline = scene.killed_at + REAP_BOUND
    while scene.left_of(victim) and time.monotonic() < deadline:
        time.sleep(1)
    assert scene.left_of(victim) == [], f"{REAP_BOUND} s after the kill of the {victim} process"


@pytest.mark.runs_last
def test_a_killed_library_candidate_leaves_nothing_after_the_reap_window(scene: Scene) -> None:
    wait_reaped(scene, "library")


@pytest.mark.runs_last
def test_a_killed_cli_supervisor_leaves_nothing_after_the_reap_window(scene: Scene) -> None:
    wait_reaped(scene, "cli")


@pytest.mark.runs_last
def test_a_killed_gunicorn_worker_leaves_nothing_after_the_reap_window(scene: Scene) -> None:
    wait_reaped(scene, "gunicorn")


@pytest.mark.runs_last
def test_a_live_candidate_removes_the_node_level_check_a_crashed_0_1_candidate_left(scene: Scene) -> None:
    def checks() -> object:
        return requests.get(f"{scene.legacy_agent.url}/v1/agent/checks", timeout=5).json()

    deadline = scene.killed_at + REAP_BOUND
    while scene.legacy_check in checks() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(1)
    assert scene.legacy_check not in checks()  # type: ignore[operator]


@pytest.mark.runs_last
def test_web_stayed_passing_while_the_killed_candidates_were_reaped(scene: Scene) -> None:
    assert scene.web_failed_at == [], \
        f"web was not passing {len(scene.web_failed_at)} times, " \
        f"first {scene.web_failed_at[0] - scene.killed_at:.1f}s after the kills"


# -- a token deleted under its leader ------------------------------------------------------------------------


@dataclass
class Revoked:
    agent: ConsulAgent
    instance: str
    session: str
    revoked_at: float
    job_stopped_at: float
    stopped: Candidate
    elected_at: List[float]
    bound: float


@pytest.fixture(scope="session")
def revoked() -> Iterator[Revoked]:
    with acl_agent() as agent:
        prefix = f"revoked/{uuid.uuid4().hex[:8]}"
        policy = documented_policy(prefix, node_name(agent))
        (token_a, accessor_a), (token_b, _) = make_token(agent, policy), make_token(agent, policy)
        # Seeing this node's instances in the catalog takes node:read.
        token_c, _ = make_token(agent, policy + f'\nnode "{node_name(agent)}" {{ policy = "read" }}\n')
        key = f"{prefix}/leader"
        a = Candidate(key, address=agent.address, token=token_a, ttl=1)
        b = Candidate(key, address=agent.address, token=token_b, ttl=1)
        elected_at: List[float] = []
        elected.connect(lambda sender, **kw: elected_at.append(time.monotonic()), sender=b, weak=False)
        job_stopped = threading.Event()
        c = Candidate(f"{prefix}/other", address=agent.address, token=token_c, ttl=1)

        def job(stop_event: threading.Event) -> None:
            stop_event.wait()
            job_stopped.set()

        try:
            a.start()
            assert a.wait_for_leadership(30)
            a.run(job, block=False)
            b.start()
            instance = next(sid for sid, s in requests.get(
                f"{agent.url}/v1/agent/services", headers={"X-Consul-Token": agent.token or ""}, timeout=5
            ).json().items() if s["Meta"].get("pid") == str(os.getpid()) and s["Meta"].get("key") == key)
            session = requests.get(f"{agent.url}/v1/kv/{key}", headers={"X-Consul-Token": agent.token or ""},
                                   timeout=5).json()[0]["Session"]
            requests.delete(f"{agent.url}/v1/acl/token/{accessor_a}", headers={"X-Consul-Token": agent.token or ""},
                            timeout=5).raise_for_status()
            revoked_at = time.monotonic()
            assert job_stopped.wait(30), "the leader's job was not stopped after its token was deleted"
            job_stopped_at = time.monotonic()
            a.stop()
            # A candidate started on the agent afterwards removes what the
            # deleted token left there and in the catalog.
            c.start()
            timing = b.timing
            yield Revoked(agent, instance, session, revoked_at, job_stopped_at, a, elected_at,
                          2 * timing.session_ttl + timing.lock_delay)
        finally:
            for candidate in (a, b, c):
                candidate.stop()


@pytest.mark.runs_first
def test_a_leader_whose_token_is_deleted_stops_its_job_within_the_lease(revoked: Revoked) -> None:
    assert revoked.job_stopped_at - revoked.revoked_at < revoked.stopped.timing.lease + 1.0


@pytest.mark.runs_last
def test_after_a_deleted_token_the_next_candidate_leads_within_twice_the_session_ttl_plus_lock_delay(
        revoked: Revoked) -> None:
    # The bound the docs give, plus Consul's session reaper's granularity.
    deadline = revoked.revoked_at + revoked.bound + 5
    while not revoked.elected_at and time.monotonic() < deadline:
        time.sleep(0.2)
    assert revoked.elected_at, f"nobody led within {revoked.bound + 5:g}s after the leader's token was deleted"
    assert revoked.elected_at[0] - revoked.revoked_at <= revoked.bound + 5


@pytest.mark.runs_last
def test_what_a_deleted_token_left_behind_is_gone_after_the_reap_window(revoked: Revoked) -> None:
    agent = revoked.agent
    headers = {"X-Consul-Token": agent.token or ""}

    def left() -> List[str]:
        found = []
        if revoked.instance in requests.get(f"{agent.url}/v1/agent/services", headers=headers, timeout=5).json():
            found.append("agent service")
        catalog = requests.get(f"{agent.url}/v1/catalog/service/consul-leader", headers=headers, timeout=5).json()
        if any(s["ServiceID"] == revoked.instance for s in catalog):
            found.append("catalog instance")
        if requests.get(f"{agent.url}/v1/session/info/{revoked.session}", headers=headers, timeout=5).json():
            found.append("session")
        return found

    deadline = revoked.revoked_at + REAP_BOUND
    while left() and time.monotonic() < deadline:
        time.sleep(1)
    assert left() == []


# -- 0.1's check, and a token that may not remove it ---------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Denied:
    check: str
    started_at: float
    records: Records


@pytest.fixture(scope="session")
def denied() -> Iterator[Denied]:
    records = Records()
    logging.getLogger("consul_leader").addHandler(records)
    with acl_agent() as agent:
        node = node_name(agent)
        check = f"consul-leader-{uuid.uuid4().hex[:16]}"
        requests.put(f"{agent.url}/v1/agent/check/register", headers={"X-Consul-Token": agent.token or ""},
                     json={"ID": check, "Name": "consul-leader: old", "TTL": "1s"}, timeout=5).raise_for_status()
        prefix = f"denied/{uuid.uuid4().hex[:8]}"
        # It may see the node's checks, not change them.
        token, _ = make_token(agent, documented_policy(prefix, node) + f'\nnode "{node}" {{ policy = "read" }}\n')
        candidate = Candidate(f"{prefix}/leader", address=agent.address, token=token, ttl=1).start()
        try:
            yield Denied(check, time.monotonic(), records)
        finally:
            candidate.stop()
            logging.getLogger("consul_leader").removeHandler(records)


@pytest.mark.runs_first
def test_a_candidate_without_node_write_starts_beside_a_check_of_0_1(denied: Denied) -> None:
    assert not [m for m in denied.records.messages if denied.check in m], "no warning before the reap window"


@pytest.mark.runs_last
def test_a_candidate_that_may_not_remove_0_1s_check_warns_naming_the_check_and_the_rule(denied: Denied) -> None:
    def warnings() -> List[str]:
        return [m for m in denied.records.messages if denied.check in m]

    deadline = denied.started_at + REAP_BOUND
    while not warnings() and time.monotonic() < deadline:
        time.sleep(1)
    assert len(warnings()) == 1, denied.records.messages
    assert 'node "' in warnings()[0] and 'policy = "write"' in warnings()[0], warnings()[0]


def test_a_clean_stop_leaves_no_instance_check_or_session(consul_agent: ConsulAgent, key: str) -> None:
    def mine(path: str) -> List[str]:
        found = requests.get(f"{consul_agent.url}{path}", timeout=5).json()
        items = found.values() if isinstance(found, dict) else found
        return [str(item) for item in items if key in str(item)]

    candidate = Candidate(key, address=consul_agent.address, ttl=1).start()
    assert candidate.wait_for_leadership(30)
    assert mine("/v1/agent/services") and mine("/v1/agent/checks") and mine("/v1/session/list")
    candidate.stop()
    assert mine("/v1/agent/services") == [] and mine("/v1/agent/checks") == []
    assert mine("/v1/session/list") == []
    # The agent syncs a deregistration to the catalog right after it.
    wait_until(lambda: mine("/v1/catalog/service/consul-leader") == [], 10, "the catalog follows the agent")
