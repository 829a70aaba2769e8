"""A resigning leader hands over to the first in line; when that one does
not take the key (frozen, or its agent refuses it), the resigner takes it
back once its sit-out ran out, rather than queue behind it."""

from __future__ import annotations

import time
from typing import Iterator, Optional

import pytest
import requests
from garbling_proxy import FailingProxy, acquisition_of

from consul_leader import Candidate
from consul_leader.line import line_prefix
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: Generous against a busy machine, and still well before the stuck waiter
#: would let go of its place (never, while its session lives).
BOUND = 15.0


def in_line(agent: ConsulAgent, key: str) -> bool:
    return requests.get(f"{agent.url}/v1/kv/{line_prefix(key)}?keys", timeout=5).status_code == 200


@pytest.fixture
def proxy(consul_agent: ConsulAgent) -> Iterator[FailingProxy]:
    with FailingProxy(consul_agent.url) as p:
        yield p


def test_a_resigner_takes_its_key_back_after_its_sit_out_when_the_first_in_line_does_not(
        consul_agent: ConsulAgent, proxy: FailingProxy, key: str) -> None:
    a = Candidate(key, identity="a", address=consul_agent.address)
    stuck = Candidate(key, identity="stuck", address=proxy.address)
    takes = acquisition_of(key)

    def refuse_its_acquisitions(method: str, path: str, body: bytes) -> Optional[str]:
        return "before" if takes(method, path, body) else None

    try:
        a.start()
        assert a.wait_for_leadership(30)
        stuck.start()
        wait_until(lambda: in_line(consul_agent, key), what="the second candidate waits in line")
        proxy.fail = refuse_its_acquisitions
        time.sleep(0.5)
        assert a.resign()
        resigned = time.monotonic()
        wait_until(lambda: a.is_leader(), timeout=BOUND, what="the resigner leads again")
        assert time.monotonic() - resigned >= a.timing.check_ttl, "it sat out first"
    finally:
        proxy.fail = lambda method, path, body: None
        stuck.stop()
        a.stop()
