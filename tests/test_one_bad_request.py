"""One ``400`` answer must not end a waiting candidate's election for good.

``_election`` retries every ConsulLeaderError except RequestRejected, and
``_refusal`` makes *every* 400 a RequestRejected, whatever the operation.
That is meant for a key Consul refuses in a URL (asking again gets the
same answer), but a 400 also comes from whatever stands between the
candidate and its agent (a proxy or sidecar restarting, a request body cut
short): one such answer to a waiter's read, and the candidate stops for
good while its process lives on. When the leader then leaves, nobody leads.
The proxy here answers one blocking read of the key with nginx's 400."""

from __future__ import annotations

import threading
import time
from typing import Optional

from garbling_proxy import Answer, ConsulProxy

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

NGINX_400 = b"<html><head><title>400 Bad Request</title></head><body><center><h1>400 Bad Request</h1></center>" \
            b"<hr><center>nginx</center></body></html>"


class OneBadRequest(ConsulProxy):
    def __init__(self, upstream: str, key: str) -> None:
        super().__init__(upstream)
        self.key = key
        self.armed = threading.Event()
        self.answered = threading.Event()

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if self.armed.is_set() and not self.answered.is_set() and method == "GET" and \
                path.startswith(f"/v1/kv/{self.key}?") and "index=" in path:
            self.answered.set()
            return Answer(400, NGINX_400, "text/html")
        return None


def test_one_bad_request_from_a_proxy_does_not_end_a_waiters_election(consul_agent: ConsulAgent, key: str) -> None:
    with OneBadRequest(consul_agent.url, key) as proxy:
        a = Candidate(key, identity="a", address=consul_agent.address)
        b = Candidate(key, identity="b", address=proxy.address)
        try:
            a.start()
            assert a.wait_for_leadership(30)
            proxy.armed.set()  # b's first blocking read of the key, as it waits, is answered 400
            b.start()
            assert proxy.answered.wait(30), "the proxy did not answer b's read"
            time.sleep(0.5)
            a.stop()  # the leader leaves for good: b is the only one left
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not b.is_leader():
                time.sleep(0.05)
            led = b.is_leader()
            try:
                b.wait_for_leadership(0.1)
                state = "no error"
            except Exception as exc:  # noqa: BLE001 - what b says when asked
                state = f"{type(exc).__name__}: {exc}"
        finally:
            b.stop()
            a.stop()
    assert led, f"b never led after one 400 answer; wait_for_leadership() says {state}"
