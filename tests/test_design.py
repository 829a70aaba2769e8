"""Checks of the code's shape: modules import alone and without cycles,
tests stay on the public surface, the types say what the code does, and
receivers connect the blinker way."""

from __future__ import annotations

import ast
import gc
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Dict, List, Set

import pytest
from mypy import api as mypy_api

from consul_leader import Candidate, Reason, deposed, elected, on_elected
from consul_leader.events import EventKind

from conftest import PYTHON, ROOT, python_env, wait_until

PACKAGE = Path(ROOT) / "consul_leader"
TESTS = Path(ROOT) / "tests"


def modules() -> List[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def module_path(module: str) -> Path:
    path = PACKAGE.parent / (module.replace(".", os.sep) + ".py")
    return path if path.exists() else PACKAGE.parent / module.replace(".", os.sep) / "__init__.py"


def typing_only_nodes(tree: ast.AST) -> Set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``: they never run."""
    return {id(n) for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.dump(block.test)
            for n in ast.walk(block)}


def internal_imports(module: str) -> Set[str]:
    """The consul_leader modules *module* imports, at import time or inside
    a function (a function-level import is a cycle postponed), but not
    under ``TYPE_CHECKING``."""
    path = module_path(module)
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: Set[str] = set()
    typing_only = typing_only_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("consul_leader"):
                submodules = {f"{target}.{a.name}" for a in node.names} & MODULES
                # "from . import signals" loads the submodule, not the package's body.
                found.update(submodules if submodules else {target})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("consul_leader"))
    found.discard(module)
    return {m for m in found if m in MODULES}


MODULES = set(modules())


def test_no_import_cycle_in_the_package() -> None:
    graph: Dict[str, Set[str]] = {m: internal_imports(m) for m in MODULES}
    # A package's __init__ may import its submodules; a submodule importing
    # its package's __init__ is what would close a cycle, and is caught.
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if ".contrib." not in m and not m.endswith("__main__")))
def test_each_module_imports_alone(module: str) -> None:
    done = subprocess.run([PYTHON, "-c", f"import {module}"], env=python_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


ALLOWED_PRIVATE = {"_exit", "_getframe"}  # os._exit, sys._getframe: the standard library's own names


def test_tests_use_no_private_attributes_of_the_library() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in ALLOWED_PRIVATE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue  # a test helper's own state
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{name}")
    assert offenders == [], "tests must use the public surface and consul_leader.testing"


#: The modules that may import ``requests`` at run time, with why: one
#: module sends HTTP (DESIGN.md, "one module talks HTTP").
REQUESTS_ALLOWED = {
    "consul_leader.transport": "sends every request to Consul, and translates its failures",
    "consul_leader.interrupt": "closes a thread's connections to cut its blocking query short",
    "consul_leader.testing.agent": "asks a throwaway agent whether it is up, outside the library",
}


def runtime_imports_of_requests(module: str) -> bool:
    tree = ast.parse(module_path(module).read_text())
    typing_only = typing_only_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "requests" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "requests":
            return True
    return False


def test_one_module_sends_http() -> None:
    # client.py says which request an operation is; transport.py sends it.
    importing = {m for m in MODULES if runtime_imports_of_requests(m)}
    assert importing <= set(REQUESTS_ALLOWED), sorted(importing - set(REQUESTS_ALLOWED))
    assert "consul_leader.transport" in importing


#: Modules whose private reaches are someone else's to remove, with why.
PRIVATE_REACH_EXEMPT = {
    "consul_leader.testing.cluster": "shares the network helper of its package",
    "consul_leader.contrib.apscheduler": "reaches into APScheduler's own internals",
    "consul_leader.contrib.django.apps": "the app's hooks live in the package's __init__",
    "consul_leader.contrib.django.views": "the app's hooks live in the package's __init__",
}


def private_names_defined(tree: ast.AST) -> Set[str]:
    """The private names a module defines: its functions, classes and
    module-level names, and the attributes its classes set on ``self``."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
    return {n for n in names if n.startswith("_")}


def test_the_package_reaches_into_no_other_modules_private_names() -> None:
    # A module may use the private names it defines (an Elector and its
    # Candidacy share their state); another module's are a seam to make public.
    offenders = []
    for module in sorted(MODULES):
        if module in PRIVATE_REACH_EXEMPT:
            continue
        tree = ast.parse(module_path(module).read_text())
        own = private_names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [f"{module}:{node.lineno}: imports {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in ALLOWED_PRIVATE or name in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            offenders.append(f"{module}:{node.lineno}: .{name}")
    assert offenders == [], "make a seam public rather than reach into another module's private names"


def run_mypy(source: str, tmp_path: Path) -> str:
    path = tmp_path / "typing_check.py"
    path.write_text(textwrap.dedent(source))
    out, err, _ = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                                "--config-file", os.devnull, str(path)])
    return out + err


def test_leader_only_adds_none_to_the_return_type(tmp_path: Path) -> None:
    out = run_mypy("""
        from consul_leader import Candidate, leader_only

        def f(x: int) -> int:
            return x

        async def g(x: int) -> str:
            return str(x)

        c = Candidate("a/b")
        a: int = leader_only(f)(1)
        b: int | None = leader_only(f)(1)
        d: int | None = leader_only(raise_not_leader=True)(f)(2)
        e: int | None = c.leader_only(f)(3)

        async def main() -> None:
            s: str | None = await leader_only(g)(1)
            t: str = await c.leader_only(g)(1)

        leader_only(f)("not an int")
    """, tmp_path)
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 3, out
    assert any(":11:" in e and "int | None" in e for e in errors), out  # a: int = ...
    assert any(":18:" in e and "str | None" in e for e in errors), out  # t: str = await ...
    assert any(":20:" in e and "\"str\"" in e for e in errors), out  # the parameters are kept


def test_on_elected_is_undone_by_disconnect(make_candidate, key) -> None:
    calls: List[str] = []

    @on_elected
    def bare(sender: Candidate, **kw: object) -> None:
        calls.append("bare")

    c = make_candidate(key)

    @c.on_elected
    def method(sender: Candidate, **kw: object) -> None:
        calls.append("method")

    elected.disconnect(bare)
    elected.disconnect(method)
    c.start()
    assert c.wait_for_leadership(30)
    c.stop()  # delivers everything queued before it returns
    assert calls == []


def test_a_receiver_does_not_keep_its_candidate_alive(consul_agent) -> None:
    c = Candidate("design/alive", address=consul_agent.address)
    c.on_deposed(lambda sender, **kw: None)
    ref = weakref.ref(c)
    del c
    gc.collect()
    assert ref() is None


def test_reasons_and_event_kinds_are_strings_with_properties() -> None:
    assert Reason.RESIGNED == "resigned" and str(Reason.LEASE_EXPIRED) == "lease expired"
    assert Reason.RESIGNED.voluntary and not Reason.LOCK_LOST.voluntary
    assert not Reason.LOCK_LOST.must_release and Reason.STOPPED.must_release
    assert Reason.KEY_OVERWRITTEN.deposed and not Reason.TERM_LIMIT.deposed
    assert EventKind.ELECTED == "elected"


def test_deposed_reason_is_a_reason_and_compares_as_text(make_candidate, key) -> None:
    got: List[object] = []
    c = make_candidate(key)
    deposed.connect(lambda s, reason: got.append(reason), sender=c, weak=False)
    c.start()
    assert c.wait_for_leadership(30)
    c.stop()
    assert got == ["stopped"] and isinstance(got[0], Reason)


def test_the_package_has_no_module_cycle_even_when_imported_in_any_order() -> None:
    # Importing a leaf first must work too (a cycle hides when the package
    # __init__ happens to import things in the right order).
    for first in ("consul_leader.decorators", "consul_leader.process", "consul_leader.signals",
                  "consul_leader.job", "consul_leader.events", "consul_leader.candidate"):
        code = f"import {first}; import consul_leader; print('ok')"
        done = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True)
        assert done.stdout.strip() == "ok", done.stderr


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_term_limit_and_sit_out_run_on_the_injected_clock(make_candidate, key) -> None:
    import time

    clock = FakeClock()
    c = make_candidate(key, term_limit=1.0, clock=clock)
    reasons: List[str] = []
    deposed.connect(lambda s, reason: reasons.append(reason), sender=c, weak=False)
    c.start()
    assert c.wait_for_leadership(30)
    time.sleep(1.5)  # real seconds: the injected clock has not moved, so the term goes on
    assert c.is_leader() and reasons == []
    clock.now += 1.0
    wait_until(lambda: reasons == ["term limit"], timeout=10, what="the term limit, on the injected clock")
    time.sleep(1.0)
    assert not c.is_leader()  # sitting out one check TTL of the injected clock
    clock.now += c.timing.check_ttl
    assert c.wait_for_leadership(30)
