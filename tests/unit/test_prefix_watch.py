"""An Elector's watch of its prefix hands on only what changed, without an
agent: a scripted client answers the listings."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from consul_leader.follower import PrefixWatch


class ScriptedClient:
    """Answers get_prefix() from a script, and notes how it was asked."""

    def __init__(self, answers: List[Tuple[int, Dict[str, Dict[str, Any]]]]) -> None:
        self.answers = answers
        self.asked: List[Tuple[Optional[int], Optional[float]]] = []

    def get_prefix(self, prefix: str, index: Optional[int] = None,
                   wait: Optional[float] = None) -> Tuple[int, Dict[str, Dict[str, Any]]]:
        self.asked.append((index, wait))
        return self.answers.pop(0)


def raw(key: str, modify_index: int, session: Optional[str] = None) -> Dict[str, Any]:
    return {"Key": key, "Value": b"v", "Session": session, "ModifyIndex": modify_index, "LockIndex": 1,
            "CreateIndex": 1}


def test_a_prefix_watch_hands_on_only_what_changed() -> None:
    client = ScriptedClient([
        (10, {"p/a": raw("p/a", 5), "p/b": raw("p/b", 6)}),
        (12, {"p/a": raw("p/a", 5), "p/b": raw("p/b", 12, "s")}),
        (13, {"p/b": raw("p/b", 12, "s")}),
    ])
    watch = PrefixWatch(client, "p/", wait=30.0)  # type: ignore[arg-type]
    first = watch.changes()
    assert (first.index, sorted(first.changed), first.removed, first.reset) == (10, ["p/a", "p/b"], frozenset(), False)
    second = watch.changes()
    assert (sorted(second.changed), second.changed["p/b"].session, second.removed) == (["p/b"], "s", frozenset())
    third = watch.changes()
    assert (third.changed, third.removed) == ({}, frozenset({"p/a"}))
    assert client.asked == [(None, None), (10, 30.0), (12, 30.0)]


def test_a_prefix_watch_starts_over_when_the_index_goes_back() -> None:
    client = ScriptedClient([(50, {"p/a": raw("p/a", 40)}), (7, {"p/a": raw("p/a", 40)})])
    watch = PrefixWatch(client, "p/", wait=30.0)  # type: ignore[arg-type]
    watch.changes()
    restored = watch.changes()
    assert restored.reset and sorted(restored.changed) == ["p/a"]
    assert watch.index == 0  # the next query does not block: Consul's rule after a reset
