"""Misuse of a Candidate against a real agent: calls in the wrong order or
twice, and a Candidate carried into a child by ``os.fork()``."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import threading
import time
import traceback
from typing import Any, Callable, Dict

import pytest

from consul_leader import Candidate, NotRunning
from consul_leader.client import ConsulClient, ConsulConfig, clear_wake, wake
from consul_leader.testing import ConsulAgent


def test_stop_twice_is_harmless_and_releases_once(key, make_candidate):
    c = make_candidate(key).start()
    assert c.wait_for_leadership(30)
    c.stop()
    c.stop()
    assert not c.running and not c.is_leader()
    entry = c.client.get_key(key)[1]
    assert entry is not None and not entry.get("Session")


def test_stop_before_start_is_harmless(key, make_candidate):
    c = make_candidate(key)
    c.stop()
    assert not c.running


def test_resign_when_not_leading_returns_false_and_changes_nothing(key, make_candidate):
    leader = make_candidate(key).start()
    assert leader.wait_for_leadership(30)
    never_started = make_candidate(key)
    assert never_started.resign() is False
    waiting = make_candidate(key).start()
    deadline = time.monotonic() + 30
    while waiting.leader() != leader.identity and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting.leader() == leader.identity
    assert waiting.resign() is False
    assert leader.is_leader() and waiting.running
    waiting.stop()
    assert waiting.resign() is False


def test_start_after_stop_raises_not_running(key, make_candidate):
    assert "NotRunning" in (Candidate.start.__doc__ or ""), "start()'s docstring must say it raises NotRunning"
    c = make_candidate(key).start()
    assert c.wait_for_leadership(30)
    c.stop()
    with pytest.raises(NotRunning, match="was stopped; create a new Candidate"):
        c.start()
    assert not c.running


@pytest.mark.parametrize("timeout", [None, 0, 5])
def test_wait_for_leadership_on_a_candidate_never_started_raises_not_running(key, make_candidate, timeout):
    assert "NotRunning" in (Candidate.wait_for_leadership.__doc__ or "")
    with pytest.raises(NotRunning, match="call start"):
        make_candidate(key).wait_for_leadership(timeout)


def test_wait_for_leadership_after_stop_raises_not_running(key, make_candidate):
    c = make_candidate(key).start()
    c.stop()
    with pytest.raises(NotRunning):
        c.wait_for_leadership(5)


# -- fork() ---------------------------------------------------------------------

class _Child:
    """A forked child running ``body(report)``; it reports dicts over a pipe
    and leaves with ``os._exit``, never returning into pytest."""

    def __init__(self, body: Callable[[Callable[..., None]], None]) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                os.close(read_end)
                body(lambda **fields: os.write(write_end, (json.dumps(fields) + "\n").encode()) and None)
            except BaseException:
                os.write(write_end, (json.dumps({"error": traceback.format_exc()}) + "\n").encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write_end)
        self.fd, self.buffer = read_end, b""

    def next(self, timeout: float = 30) -> Dict[str, Any]:
        """The child's next report."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                self.kill()
                raise AssertionError(f"the child reported nothing within {timeout}s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError("the child exited without reporting")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        report: Dict[str, Any] = json.loads(line)
        assert "error" not in report, report["error"]
        return report

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the child did not exit within {timeout}s")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _holder(c: Candidate) -> Any:
    entry = c.client.get_key(c.key)[1]
    return entry.get("Session") if entry else None


def test_a_forked_child_does_not_lead_and_never_releases_the_parents_lock(key, make_candidate):
    parent = make_candidate(key).start()
    assert parent.wait_for_leadership(30)
    session = _holder(parent)
    assert session

    def child(report: Callable[..., None]) -> None:
        report(is_leader=parent.is_leader(), fencing_token=parent.fencing_token, running=parent.running)
        report(resigned=parent.resign())
        parent.stop()  # would release the lock, were the session still its own
        report(stopped=True)

    reports = _Child(child)
    first = reports.next()
    assert first == {"is_leader": False, "fencing_token": None, "running": False}
    assert reports.next() == {"resigned": False}
    assert reports.next() == {"stopped": True}
    assert reports.exit_code() == 0
    # Two heartbeat periods later the parent still holds its own lock.
    time.sleep(parent.timing.heartbeat * 2)
    assert parent.is_leader()
    assert _holder(parent) == session


def test_a_forked_child_can_start_the_candidate_again_with_its_own_session(key, make_candidate):
    parent = make_candidate(key, ttl=1.0).start()
    assert parent.wait_for_leadership(30)
    parent_session = _holder(parent)

    def child(report: Callable[..., None]) -> None:
        parent.start()
        deadline = time.monotonic() + 30
        while parent.leader() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        report(running=parent.running, sees=parent.leader(), is_leader=parent.is_leader())
        if not parent.wait_for_leadership(30):
            report(won=False)
            return
        report(won=True, session=_holder(parent), fencing_token=parent.fencing_token)
        parent.stop()
        report(stopped=True, holder=_holder(parent))

    reports = _Child(child)
    waiting = reports.next()
    assert waiting == {"running": True, "sees": parent.identity, "is_leader": False}
    parent_token = parent.fencing_token
    parent.stop()  # hand over to the child
    won = reports.next()
    assert won["won"] is True
    assert won["session"] and won["session"] != parent_session
    assert won["fencing_token"] > parent_token
    assert reports.next() == {"stopped": True, "holder": None}
    assert reports.exit_code() == 0


def _fork_while(churn: Callable[[], None], child: Callable[[Callable[..., None]], None]) -> None:
    """Fork 20 children while another thread runs *churn* over and over;
    each child must run *child* (which reports ``ok=True``) within 10 s."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            churn()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            reports = _Child(child)
            assert reports.next(timeout=10) == {"ok": True}
            assert reports.exit_code() == 0
    finally:
        stop.set()
        thread.join()


def test_a_child_forked_while_another_thread_cuts_requests_can_still_ask_consul(consul_agent, key):
    # The cuts of wake()/interrupt() take a module lock; a fork copies it in
    # whatever state another thread left it, and a child that found it held
    # hung on its first request.
    def cut() -> None:
        wake(threading.current_thread())
        clear_wake()

    def child(report: Callable[..., None]) -> None:
        ConsulClient(ConsulConfig.from_args(address=consul_agent.address)).get_key(key)
        report(ok=True)

    _fork_while(cut, child)


def test_a_child_forked_while_another_thread_scrapes_metrics_can_register_a_candidate(consul_agent, key):
    # The sibling of the test above, for the metrics registry's locks: a
    # scrape (a gunicorn --preload master serving /metrics) holds them.
    from prometheus_client import CollectorRegistry

    from consul_leader.metrics import register

    registry = CollectorRegistry()
    register(Candidate(key, address=consul_agent.address), registry)

    def child(report: Callable[..., None]) -> None:
        register(Candidate(key + "-child", address=consul_agent.address), registry)
        report(ok=True)

    _fork_while(lambda: list(registry.collect()), child)


def test_an_agent_that_stays_down_is_one_log_line_not_one_per_retry(caplog, key):
    # An agent down for 5 s: the first failure, then nothing more above
    # DEBUG until it recovers (a reminder comes once a minute).
    caplog.set_level(logging.DEBUG, logger="consul_leader")
    with ConsulAgent() as agent:
        c = Candidate(key, address=agent.address, ttl=1, timeout=1)
        try:
            c.start()
            assert c.wait_for_leadership(30)
            agent.stop(signal.SIGKILL)  # refused at once, without the answers of an agent shutting down
            time.sleep(5)
            said = [r for r in caplog.records if r.levelno >= logging.WARNING and "election for" in r.getMessage()]
            retried = [r for r in caplog.records if r.levelno == logging.DEBUG and "(attempt" in r.getMessage()]
        finally:
            c.stop()
    assert len(said) == 1, "\n".join(r.getMessage()[60:200] for r in said)
    assert len(retried) >= 3, "every attempt still goes to DEBUG"
