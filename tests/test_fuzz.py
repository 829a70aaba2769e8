"""Fuzzing the public arguments with wrong types and values.

Every public argument, given junk, either is accepted or raises
:class:`ConfigurationError` (a ValueError) / ``ConfigurationTypeError`` (a
TypeError) whose message names the argument; nothing else escapes, nothing
hangs. Keys and identities that are accepted really work: a candidate using
them wins an election on a real agent and its thread survives.
"""

from __future__ import annotations

import math
import signal
import threading
import unicodedata
import uuid
from typing import Any, Callable, Dict, Iterator

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import consul_leader
from consul_leader import Candidate, ConfigurationError, Follower, elected, leader_only, set_default
from consul_leader.errors import ConfigurationTypeError, NotRunning
from consul_leader.validation import check_job

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


# Values of every kind a caller might pass by mistake.
junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.binary(max_size=10),
    st.lists(st.integers(), max_size=3), st.tuples(st.text(max_size=5), st.text(max_size=5)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.complex_numbers(),
    st.builds(_Opaque), st.sampled_from([object, print, math.pi, b"", (), frozenset()]),
)

CANDIDATE_ARGS = ["identity", "consul", "address", "token", "datacenter", "verify", "cert", "ttl", "lock_delay",
                  "lease", "heartbeat", "session_ttl", "term_limit", "wait", "timeout"]
FOLLOWER_ARGS = ["consul", "address", "token", "datacenter", "verify", "cert", "wait"]


def _clear(exc: BaseException, name: str) -> None:
    """A clear configuration error: ours, and it names the argument."""
    assert isinstance(exc, (ConfigurationError, ConfigurationTypeError)), repr(exc)
    assert isinstance(exc, (ValueError, TypeError))
    assert name in str(exc), (name, str(exc))


def _call(fn: Callable[[], Any], name: str) -> bool:
    """Call *fn*; True if it accepted the value, False if it raised a clear error."""
    try:
        fn()
    except Exception as exc:  # anything but a clear configuration error fails the test
        _clear(exc, name)
        return False
    return True


@pytest.fixture(autouse=True)
def _no_consul_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT",
                "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY"):
        monkeypatch.delenv(var, raising=False)


@FUZZ
@given(key=junk)
def test_candidate_and_follower_key(key):
    if _call(lambda: Candidate(key, address="127.0.0.1:1"), "key"):
        assert isinstance(key, str)
    _call(lambda: Follower(key, address="127.0.0.1:1"), "key")


@pytest.mark.parametrize("cls, name", [(Candidate, n) for n in CANDIDATE_ARGS] + [(Follower, n) for n in FOLLOWER_ARGS])
@FUZZ
@given(value=junk)
def test_every_candidate_and_follower_argument(cls, name, value):
    kwargs: Dict[str, Any] = {name: value}
    if name != "consul" and "address" not in kwargs:
        kwargs["address"] = "127.0.0.1:1"
    _call(lambda: cls("fuzz/leader", **kwargs), name)


@FUZZ
@given(token=st.text(min_size=4, max_size=40))
def test_a_malformed_token_is_refused_without_being_echoed(token):
    try:
        Candidate("fuzz/leader", address="127.0.0.1:1", token=token)
    except ConfigurationError as exc:
        assert "token" in str(exc) and token not in str(exc)
    else:
        assert token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


@FUZZ
@given(ttl=st.floats(0.5, 100), lease=st.none() | st.floats(0.1, 100), heartbeat=st.none() | st.floats(0.05, 50),
       lock_delay=st.none() | st.floats(0, 60), session_ttl=st.none() | st.integers(10, 200))
def test_timing_combinations_are_accepted_only_when_safe(ttl, lease, heartbeat, lock_delay, session_ttl):
    try:
        c = Candidate("fuzz/leader", address="127.0.0.1:1", ttl=ttl, lease=lease, heartbeat=heartbeat,
                      lock_delay=lock_delay, session_ttl=session_ttl)
    except ConfigurationError as exc:
        assert any(n in str(exc) for n in ("lease", "heartbeat", "lock_delay", "ttl"))
        return
    t = c.timing
    assert t.heartbeat * 2 <= t.lease < min(t.check_ttl, t.lock_delay, t.session_ttl)


@FUZZ
@given(func=junk, raise_not_leader=junk, candidate=junk)
def test_leader_only(func, raise_not_leader, candidate):
    if _call(lambda: leader_only(raise_not_leader=raise_not_leader, candidate=candidate), "raise_not_leader"
             if not isinstance(raise_not_leader, bool) else "candidate"):
        assert isinstance(raise_not_leader, bool) and candidate is None
    if func is not None:
        _call(lambda: leader_only(func), "callable")


@FUZZ
@given(value=junk)
def test_set_default(value):
    assert not _call(lambda: set_default(value), "Candidate") or value is None
    set_default(None)


def _arity(n: int) -> Callable[..., None]:
    return [lambda: None, lambda stop: None, lambda a, b: None][n]


jobs = junk | st.integers(0, 2).map(_arity) | st.sampled_from([len, print, check_job])


@FUZZ
@given(job=jobs, block=junk)
def test_run_job_and_block(job, block):
    job_ok = callable(job) and _call(lambda: check_job(job), "job")
    assume(not (job_ok and isinstance(block, bool)))  # a valid call would run the election
    c = Candidate("fuzz/leader", address="127.0.0.1:1")
    assert not _call(lambda: c.run(job, block=block), "job" if not job_ok else "block")
    assert not c.running, "a refused run() must not start the candidate"


@FUZZ
@given(timeout=junk)
def test_wait_for_leadership_timeout(timeout):
    c = Candidate("fuzz/leader", address="127.0.0.1:1")
    try:
        c.wait_for_leadership(timeout)
    except NotRunning:  # a valid timeout on a candidate never started
        assert timeout is None or (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                                   and timeout >= 0)
    except Exception as exc:
        _clear(exc, "timeout")
    else:
        pytest.fail("wait_for_leadership() returned on a candidate never started")


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@FUZZ
@given(signums=junk | st.lists(st.integers(-3, 70) | junk, max_size=3).map(tuple))
def test_stop_on_signals(restore_signals, signums):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    if not _call(lambda: consul_leader.stop_on_signals(signums), "signums"):
        # Refused as a whole: no handler was changed on the way.
        assert before == {s: signal.getsignal(s) for s in before}
    for s, handler in before.items():
        signal.signal(s, handler)


# -- accepted keys and identities work on a real agent ------------------------

# Consul 1.8 refuses (400) characters newer than its Unicode tables; those of
# Unicode 3.2 are safe. Unprintable ones must be refused by check_key.
_PRINTABLE_OLD = [ch for ch in map(chr, range(0x20, 0x30000))
                  if ch.isprintable() and unicodedata.ucd_3_2_0.category(ch) != "Cn"]
_UNPRINTABLE = ["\x00", "\n", "\x7f", "\x85", "\u200b", "\u2028", "\ufffe", "\U000e0001"]
key_parts = st.text(st.sampled_from(_PRINTABLE_OLD), min_size=1, max_size=12) | \
    st.text(st.sampled_from(_PRINTABLE_OLD) | st.sampled_from(_UNPRINTABLE), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(key_parts, min_size=1, max_size=3), identity=st.text(min_size=1, max_size=40))
def test_accepted_keys_and_identities_win_an_election(consul_agent, parts, identity):
    key = f"fuzz-{uuid.uuid4().hex[:8]}/" + "/".join(parts)
    try:
        c = Candidate(key, identity=identity, address=consul_agent.address, ttl=1.0)
    except ConfigurationError as exc:
        assert "key" in str(exc) or "identity" in str(exc)
        event("refused")
        return
    event("elected")
    won = threading.Event()
    elected.connect(lambda sender, **kw: won.set(), sender=c, weak=False)
    try:
        c.start()
        assert won.wait(30), f"{c!r} was not elected with key {key!r}"
        assert c.health().running
        assert c.client.get_key(key)[1]["Value"] == identity.encode("utf-8")
    finally:
        c.stop()
    assert not c.running
