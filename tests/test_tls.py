"""TLS: elections over HTTPS with the CA given by ``verify=`` or
``CONSUL_CACERT``, client certificates by ``cert=`` or ``CONSUL_CLIENT_CERT``
/ ``CONSUL_CLIENT_KEY``, and clear :class:`ConsulTLSError` reports when the CA
is wrong or the agent wants a client certificate that was not given.

The certificates are made by the real ``consul tls`` commands; the agents are
real agents serving HTTPS with them.
"""

from __future__ import annotations

import threading
import uuid
from typing import Callable, Iterator, List, Tuple

import pytest
from security_helpers import PKI, make_pki, tls_agent

from consul_leader import Candidate, ConsulTLSError, Follower, election_error
from consul_leader.testing import ConsulAgent

TLS_ENV = ("CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_HTTP_SSL_VERIFY",
           "CONSUL_HTTP_SSL", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def https_agent(pki: PKI) -> Iterator[Tuple[ConsulAgent, str]]:
    agent, address = tls_agent(pki)
    with agent:
        yield agent, address


@pytest.fixture(scope="module")
def mtls_agent(pki: PKI) -> Iterator[Tuple[ConsulAgent, str]]:
    """An agent whose HTTPS port requires a client certificate."""
    agent, address = tls_agent(pki, require_client_cert=True)
    with agent:
        yield agent, address


@pytest.fixture
def candidates(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Candidate]]:
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)
    made: List[Candidate] = []

    def make(address: str, **kwargs: object) -> Candidate:
        c = Candidate(f"tls/{uuid.uuid4().hex[:8]}/leader", address=address, ttl=1.0, **kwargs)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


class _Errors(List[BaseException]):
    """The errors a candidate reports through ``election_error``."""

    def __init__(self, candidate: Candidate) -> None:
        super().__init__()
        self.seen = threading.Event()
        election_error.connect(self._receive, sender=candidate, weak=False)

    def _receive(self, sender: object, error: BaseException, **kwargs: object) -> None:
        self.append(error)
        self.seen.set()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_verify_argument_names_the_ca_and_the_election_succeeds(https_agent, pki, candidates, host):
    _, address = https_agent
    address = address.replace("127.0.0.1", host)
    c = candidates(address, verify=pki.ca, identity="over-https").start()
    assert c.wait_for_leadership(30)
    with Follower(c.key, address=address, verify=pki.ca) as follower:
        assert follower.wait_for_leader(30) == "over-https"


def test_consul_cacert_names_the_ca_and_the_election_succeeds(https_agent, pki, candidates, monkeypatch):
    monkeypatch.setenv("CONSUL_CACERT", pki.ca)
    c = candidates(https_agent[1]).start()
    assert c.client.config.verify == pki.ca
    assert c.wait_for_leadership(30)


@pytest.mark.parametrize("ca", ["other", "system"])
def test_an_untrusted_certificate_is_a_clear_tls_error_sent_through_election_error(
        https_agent, pki, candidates, ca):
    c = candidates(https_agent[1], verify=pki.other_ca if ca == "other" else True)
    errors = _Errors(c)
    c.start()
    assert errors.seen.wait(30)
    # Retried like an unreachable agent: waiting ends with False, not an exception.
    assert c.wait_for_leadership(0.5) is False
    assert errors and all(isinstance(e, ConsulTLSError) for e in errors)
    message = str(errors[0])
    assert "TLS handshake with https://127.0.0.1:" in message
    assert "not signed by a CA this client trusts; give verify= or CONSUL_CACERT" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert c.health().running and not c.is_leader()


def test_a_client_certificate_given_as_cert_is_accepted(mtls_agent, pki, candidates):
    c = candidates(mtls_agent[1], verify=pki.ca, cert=(pki.client_cert, pki.client_key)).start()
    assert c.wait_for_leadership(30)


def test_a_client_certificate_from_the_environment_is_accepted(mtls_agent, pki, candidates, monkeypatch):
    monkeypatch.setenv("CONSUL_CACERT", pki.ca)
    monkeypatch.setenv("CONSUL_CLIENT_CERT", pki.client_cert)
    monkeypatch.setenv("CONSUL_CLIENT_KEY", pki.client_key)
    c = candidates(mtls_agent[1]).start()
    assert c.client.config.cert == (pki.client_cert, pki.client_key)
    assert c.wait_for_leadership(30)


def test_a_missing_client_certificate_is_a_clear_tls_error(mtls_agent, pki, candidates):
    c = candidates(mtls_agent[1], verify=pki.ca)
    errors = _Errors(c)
    c.start()
    assert errors.seen.wait(30)
    assert c.wait_for_leadership(0.5) is False
    assert errors and all(isinstance(e, ConsulTLSError) for e in errors)
    assert "if it requires client certificates (verify_incoming), give cert= or CONSUL_CLIENT_CERT and " \
           "CONSUL_CLIENT_KEY" in str(errors[0])
    assert c.health().running


def test_consul_tls_server_name_is_the_name_the_certificate_is_checked_against(
        https_agent, pki, candidates, monkeypatch):
    monkeypatch.setenv("CONSUL_CACERT", pki.ca)
    # Consul's server certificates name server.<dc>.consul: the agent is
    # reached by its IP address and checked against that name.
    monkeypatch.setenv("CONSUL_TLS_SERVER_NAME", "server.dc1.consul")
    c = candidates(https_agent[1]).start()
    assert c.wait_for_leadership(30)


def test_a_consul_tls_server_name_the_certificate_does_not_carry_fails_the_handshake(
        https_agent, pki, candidates, monkeypatch):
    monkeypatch.setenv("CONSUL_CACERT", pki.ca)
    monkeypatch.setenv("CONSUL_TLS_SERVER_NAME", "elsewhere.example")
    c = candidates(https_agent[1])
    errors = _Errors(c)
    c.start()
    assert errors.seen.wait(30)
    assert isinstance(errors[0], ConsulTLSError) and "not valid for this host name" in str(errors[0])
    assert not c.is_leader()
