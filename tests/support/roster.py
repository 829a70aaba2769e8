"""Scenes on a key's roster (see consul_leader.roster)."""

from __future__ import annotations

import json
import uuid

import requests

from consul_leader.roster import roster_prefix


def left_by_a_crash(url: str, key: str, lock_delay: float) -> str:
    """Write the roster entry that a candidate which led *key* and crashed
    leaves behind (free, its session gone), so that the key's next first
    holder must wait *lock_delay*. Returns the entry's key."""
    entry = roster_prefix(key) + str(uuid.uuid4())
    body = {"identity": "crashed", "host": "elsewhere", "pid": 1, "since": 0, "lock_delay": lock_delay, "led": True}
    requests.put(f"{url}/v1/kv/{entry}", data=json.dumps(body), timeout=5).raise_for_status()
    return entry
