"""Arguments and settings: derived timing, validation messages, environment."""

from __future__ import annotations

import pytest

from consul_leader import Candidate, ConfigurationError, ConsulConfig, Follower, Timing


def test_ttl_scales_every_duration_and_keeps_the_safety_rule():
    t = Timing.from_ttl(3)
    assert (t.check_ttl, t.heartbeat, t.lease, t.lock_delay, t.session_ttl) == (3, 1, 2.5, 3, 10)
    for ttl in (0.5, 1, 2, 7.5, 30, 100, 3600):
        t = Timing.from_ttl(ttl)
        assert t.heartbeat * 2 <= t.lease < min(t.check_ttl, t.session_ttl, t.lock_delay)
        assert 10 <= t.session_ttl <= 86400 and 0 <= t.lock_delay <= 60


@pytest.mark.parametrize("kwargs, needle", [
    ({"key": ""}, "key must not be empty"),
    ({"key": "   "}, "key must not be empty"),
    ({"key": "/service/leader"}, "must not start with '/'"),
    ({"key": "service/"}, "not a folder"),
    ({"key": 42}, "key must be a str"),
    ({"identity": 7}, "identity must be a str"),
    ({"identity": ""}, "identity must not be empty"),
    ({"ttl": 0}, "ttl must be between 0.5 and 3600"),
    ({"ttl": 10_000}, "ttl must be between"),
    ({"ttl": float("nan")}, "ttl must be between"),
    ({"ttl": "3"}, "ttl must be a number"),
    ({"ttl": True}, "ttl must be a number"),
    ({"lock_delay": 61}, "lock_delay must be between 0 and 60"),
    ({"session_ttl": 5}, "session_ttl must be between 10 and 86400"),
    ({"session_ttl": 12.5}, "whole number"),
    ({"lease": 3}, "lease=3s must be shorter than min("),
    ({"lock_delay": 1, "lease": 2.5}, "lease=2.5s must be shorter than min("),
    ({"lock_delay": 0}, "must be shorter than"),
    ({"heartbeat": 2}, "heartbeat=2s must be at most half of lease"),
    ({"term_limit": 0}, "term_limit must be a positive number"),
    ({"term_limit": "1h"}, "term_limit must be a number"),
    ({"wait": "no"}, "wait must be True or False"),
    ({"address": "not a url:xx"}, "is not an agent address"),
    ({"address": "ftp://127.0.0.1:8500"}, "is not an agent address"),
    ({"address": "unix:///tmp/consul.sock"}, "unix sockets are not supported"),
    ({"timeout": 0}, "timeout must be in (0, 300]"),
    ({"verify": "/no/such/ca.pem"}, "CA file that does not exist"),
    ({"cert": "/no/such/cert.pem"}, "names a file that does not exist"),
    ({"datacenter": ""}, "datacenter must be a non-empty str"),
])
def test_bad_arguments_give_a_value_error_naming_the_argument(kwargs, needle):
    args = {"key": "service/leader", **kwargs}
    with pytest.raises(ValueError) as info:
        Candidate(args.pop("key"), **args)
    assert isinstance(info.value, ConfigurationError)
    assert needle in str(info.value)


def test_wrong_types_are_also_type_errors():
    with pytest.raises(TypeError):
        Candidate("service/leader", identity=b"bytes")  # type: ignore[arg-type]


def test_consul_and_address_together_are_refused():
    import consul

    with pytest.raises(ValueError, match="either consul= or address"):
        Candidate("k", consul=consul.Consul(), address="127.0.0.1:8500")


def test_settings_come_from_the_consul_cli_environment(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    token_file = tmp_path / "token"
    token_file.write_text("secret-from-file\n")
    env = {"CONSUL_HTTP_ADDR": "https://consul.example:8501", "CONSUL_CACERT": str(ca),
           "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    cfg = ConsulConfig.from_args(environ=env)
    assert (cfg.scheme, cfg.host, cfg.port, cfg.verify, cfg.token) == (
        "https", "consul.example", 8501, str(ca), "secret-from-file")
    env["CONSUL_HTTP_TOKEN"] = "secret-from-env"
    assert ConsulConfig.from_args(environ=env).token == "secret-from-env"
    # an explicit argument beats the environment (py-consul does it the other way round)
    assert ConsulConfig.from_args(token="explicit", environ=env).token == "explicit"
    assert ConsulConfig.from_args(environ={"CONSUL_HTTP_ADDR": "10.1.2.3", "CONSUL_HTTP_SSL": "true"}).address \
        == "https://10.1.2.3:8501"
    assert ConsulConfig.from_args(environ={}).address == "http://127.0.0.1:8500"


def test_settings_can_come_from_an_existing_consul_client():
    import consul

    c = Candidate("k", consul=consul.Consul(host="10.0.0.9", port=8600, token="tok", dc="dc7"))
    cfg = c.client.config
    assert (cfg.host, cfg.port, cfg.token, cfg.datacenter) == ("10.0.0.9", 8600, "tok", "dc7")


def test_the_token_never_shows_in_a_repr():
    c = Candidate("k", token="s3cr3t-token", address="127.0.0.1:1")
    f = Follower("k", token="s3cr3t-token", address="127.0.0.1:1")
    for text in (repr(c), repr(c.client), repr(c.client.config), repr(f), repr(f.client)):
        assert "s3cr3t" not in text


def test_default_identity_is_host_and_pid():
    import os
    import socket

    assert Candidate("k").identity == f"{socket.gethostname()}:{os.getpid()}"


def test_an_ipv6_agent_address_is_bracketed_in_urls():
    cfg = ConsulConfig.from_args(address="[::1]:8500", environ={})
    assert (cfg.host, cfg.port) == ("[::1]", 8500)
    assert cfg.address == "http://[::1]:8500"
    from consul_leader.client import ConsulClient

    assert ConsulClient(cfg).base_uri == "http://[::1]:8500"


def test_consul_capath_alone_is_refused_saying_to_give_a_ca_file(tmp_path):
    env = {"CONSUL_CAPATH": str(tmp_path)}
    with pytest.raises(ValueError, match="CONSUL_CAPATH=.* give it as CONSUL_CACERT or verify="):
        ConsulConfig.from_args(environ=env)
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert ConsulConfig.from_args(environ=dict(env, CONSUL_CACERT=str(ca))).verify == str(ca)
    assert ConsulConfig.from_args(verify=False, environ=env).verify is False


def test_consul_namespace_is_refused_rather_than_ignored():
    with pytest.raises(ValueError, match="CONSUL_NAMESPACE='team-a' is set.*Enterprise namespaces"):
        ConsulConfig.from_args(environ={"CONSUL_NAMESPACE": "team-a"})


def test_consul_tls_server_name_comes_from_the_environment_and_shows_in_repr():
    config = ConsulConfig.from_args(environ={"CONSUL_TLS_SERVER_NAME": "server.dc1.consul"})
    assert config.tls_server_name == "server.dc1.consul"
    assert "tls_server_name='server.dc1.consul'" in repr(config)
    with pytest.raises(ValueError, match="tls_server_name"):
        ConsulConfig.from_args(environ={"CONSUL_TLS_SERVER_NAME": "a b"})
