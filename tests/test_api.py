"""The import surface: ``from consul_leader import ...`` offers exactly the
names of ``__all__``, sorted (as httpx checks its own)."""

from __future__ import annotations

import types

import consul_leader


def public_names() -> list:
    return sorted(name for name, value in vars(consul_leader).items()
                  if not name.startswith("_") and not isinstance(value, types.ModuleType))


def test_all_is_the_sorted_list_of_public_names() -> None:
    assert consul_leader.__all__ == public_names()


def test_every_name_in_all_is_importable() -> None:
    namespace: dict = {}
    exec("from consul_leader import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == consul_leader.__all__
