"""ACLs: the documented policy is enough to run an election; each missing rule
is refused with a clear error that names it, without killing or spinning the
candidate's thread; the token never leaks into logs or reprs.

All against a real agent with ``default_policy = "deny"``, bootstrapped
through the HTTP API. What Consul 1.8.7 answers for each missing rule:

* no ``node`` write: ``PUT /v1/agent/check/register`` is 403 "Permission
  denied: Missing node:write on <node>" (and so are check pass and deregister);
* no ``session`` write: ``PUT /v1/session/create`` is 403 "Permission denied";
* no ``key`` write: ``PUT /v1/kv/<key>?acquire=`` is 403 "Permission denied"
  (with key read only; without any key rule reads are 403 as well);
* an unknown token: 403 "ACL not found" on every endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Iterator, List

import pytest
from security_helpers import acl_agent, documented_policy, make_token, node_name, set_token_rules

from consul_leader import Candidate, ConsulConfig, Follower, PermissionDenied, elected, election_error
from consul_leader.testing import ConsulAgent

from conftest import candidate_factory


@pytest.fixture(scope="module")
def agent() -> Iterator[ConsulAgent]:
    with acl_agent() as a:
        yield a


@pytest.fixture(scope="module")
def node(agent: ConsulAgent) -> str:
    return node_name(agent)


@pytest.fixture
def prefix() -> str:
    return f"acl/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def candidates(agent: ConsulAgent, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Candidate]]:
    for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with candidate_factory(agent, ttl=1.0) as make:
        yield make


def _errors_of(candidate: Candidate) -> List[BaseException]:
    errors: List[BaseException] = []
    election_error.connect(lambda sender, error, **kw: errors.append(error), sender=candidate, weak=False)
    return errors


def _elected_event(candidate: Candidate) -> threading.Event:
    event = threading.Event()
    elected.connect(lambda sender, **kw: event.set(), sender=candidate, weak=False)
    return event


def test_the_documented_policy_runs_an_election_and_a_handover(agent, node, prefix, candidates):
    token, _ = make_token(agent, documented_policy(prefix, node))
    first = candidates(f"{prefix}/leader", token=token, identity="first").start()
    assert first.wait_for_leadership(30)
    second = candidates(f"{prefix}/leader", token=token, identity="second").start()
    with Follower(f"{prefix}/leader", address=agent.address, token=token) as follower:
        assert follower.wait_for_leader(30) == "first"
    first.stop()
    assert second.wait_for_leadership(30)
    assert second.leader() == "second"


# Each case leaves out one rule of the documented policy.
MISSING = {
    "key": ("acquire lock", 'key_prefix "<key>" { policy = "write" }'),
    "session": ("create session", 'session "<this agent\'s node>" { policy = "write" }'),
    "service": ("register service", 'service "consul-leader" { policy = "write" }'),
    # Without its entry on the roster a leader would be invisible to the
    # next first holder of its key: no lock without it.
    "roster": ("acquire lock", 'key_prefix "consul-leader/participants/<key>/" { policy = "write" }'),
}


def _policy_without(rule: str, prefix: str, node: str) -> str:
    blocks = documented_policy(prefix, node).strip().split("\n}\n")
    start = {"key": f'key_prefix "{prefix}/"', "roster": 'key_prefix "consul-leader/'}.get(rule, rule + " ")
    kept = [b for b in blocks if not b.lstrip().startswith(start)]
    assert len(kept) == len(blocks) - 1, blocks
    return "\n}\n".join(kept) + ("" if kept[-1].endswith("}") else "\n}")


@pytest.mark.parametrize("missing", sorted(MISSING))
def test_a_policy_without_one_rule_is_refused_naming_the_operation_and_the_rule(
        agent, node, prefix, candidates, missing):
    token, _ = make_token(agent, _policy_without(missing, prefix, node))
    key = f"{prefix}/leader"
    c = candidates(key, token=token)
    errors = _errors_of(c)
    c.start()
    with pytest.raises(PermissionDenied) as info:
        c.wait_for_leadership(30)
    operation, rule = MISSING[missing]
    message = str(info.value)
    assert message.startswith(f"{operation}: Consul refused the ACL token")
    assert rule.replace("<key>", key) in message
    assert info.value.rule == rule.replace("<key>", key) and info.value.operation == operation
    assert errors and all(isinstance(e, PermissionDenied) for e in errors)
    assert not c.is_leader()


def test_a_refused_candidate_backs_off_stays_alive_and_recovers_when_the_policy_is_fixed(
        agent, node, prefix, candidates):
    token, accessor = make_token(agent, _policy_without("key", prefix, node))
    c = candidates(f"{prefix}/leader", token=token)
    errors = _errors_of(c)
    won = _elected_event(c)
    c.start()
    with pytest.raises(PermissionDenied):
        c.wait_for_leadership(30)
    first = len(errors)
    time.sleep(3)
    # A refused request takes about a millisecond: a thread that retried
    # without backoff would have failed hundreds of times in 3 s.
    assert 0 < len(errors) - first < 40
    assert c.health().running and c.running
    set_token_rules(agent, accessor, documented_policy(prefix, node))
    assert won.wait(30), "the candidate did not win after its policy was fixed"
    assert c.is_leader()


def test_an_unknown_token_is_reported_as_unknown(agent, prefix, candidates):
    c = candidates(f"{prefix}/leader", token=str(uuid.uuid4())).start()
    with pytest.raises(PermissionDenied, match=r"does not know the ACL token \(ACL not found\); check token="):
        c.wait_for_leadership(30)


def test_a_follower_whose_token_may_not_read_the_key_raises_permission_denied_at_once(agent, prefix):
    with Follower(f"{prefix}/leader", address=agent.address, token=str(uuid.uuid4())) as follower:
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match=r"ACL not found"):
            follower.wait_for_leader(30)
        assert time.monotonic() - started < 10, "not after the whole timeout: waiting would not help"


def test_without_a_token_the_error_says_the_anonymous_token_was_refused(prefix, candidates):
    c = candidates(f"{prefix}/leader").start()
    with pytest.raises(PermissionDenied, match="anonymous token .no token was given: pass token= or set "
                                               "CONSUL_HTTP_TOKEN"):
        c.wait_for_leadership(30)


def test_the_token_comes_from_consul_http_token(agent, node, prefix, candidates, monkeypatch):
    token, _ = make_token(agent, documented_policy(prefix, node))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", token)
    assert candidates(f"{prefix}/leader").start().wait_for_leadership(30)


def test_the_token_comes_from_consul_http_token_file(agent, node, prefix, candidates, monkeypatch, tmp_path):
    token, _ = make_token(agent, documented_policy(prefix, node))
    path = tmp_path / "token"
    path.write_text(token + "\n")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(path))
    assert candidates(f"{prefix}/leader").start().wait_for_leadership(30)


def test_the_token_never_reaches_logs_or_reprs(agent, node, prefix, candidates, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="consul_leader")
    good, _ = make_token(agent, documented_policy(prefix, node))
    bad, _ = make_token(agent, _policy_without("session", prefix, node))
    leader = candidates(f"{prefix}/leader", token=good, identity="good")
    refused = candidates(f"{prefix}/leader", token=bad, identity="bad")
    errors = _errors_of(refused)
    leader.start()
    assert leader.wait_for_leadership(30)
    refused.start()
    with pytest.raises(PermissionDenied) as info:
        refused.wait_for_leadership(30)
    follower = Follower(f"{prefix}/leader", address=agent.address, token=good).start()
    assert follower.wait_for_leader(30) == "good"
    follower.stop()
    leader.resign()
    leader.stop()

    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3's DEBUG log was not captured"
    assert any(r.name == "consul_leader" for r in caplog.records)
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), repr(vars(record))]
    for obj in (leader, refused, follower, leader.client, leader.client.config, refused.client.config,
                ConsulConfig.from_args(token=good), info.value, *errors):
        texts += [repr(obj), str(obj)]
    for secret in (good, bad):
        leaks = [t for t in texts if secret in t]
        assert not leaks, leaks[:3]
