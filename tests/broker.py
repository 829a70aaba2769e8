"""A throwaway redis-server for the Celery tests (Debian's package, found or
installed by scripts/install-redis) on a free loopback port, without
persistence; and reading back what a beat sent to it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Dict, Iterator, List

import redis

from consul_leader.testing import free_ports

from conftest import ROOT, wait_until


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run a redis-server; yield its URL (database 0)."""
    binary = subprocess.run([os.path.join(ROOT, "scripts", "install-redis")], check=True, capture_output=True,
                            text=True).stdout.strip().splitlines()[-1]
    port = free_ports(1)[0]
    workdir = tempfile.mkdtemp(prefix="consul-leader-redis-")
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return server.poll() is not None  # ends the wait; the assert below says why

    try:
        wait_until(answers, timeout=30, what="redis-server answers PING")
        assert server.poll() is None, f"redis-server exited with {server.returncode}"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def sent(url: str) -> List[Dict[str, Any]]:
    """The headers of every task message in the broker's ``celery`` queue,
    oldest run first."""
    messages = [json.loads(raw)["headers"] for raw in redis.Redis.from_url(url).lrange("celery", 0, -1)]
    return sorted(messages, key=lambda h: h["consul_leader_run_at"])


def label(headers: Dict[str, Any]) -> str:
    """The entry's argument, e.g. "every 1 s"."""
    return str(headers["argsrepr"]).strip("()[],'\"")
