"""What a user reads names real concepts, never the project's internal or
development vocabulary: the package's docstrings, log and error messages and
help texts (every string literal in consul_leader/), the CLI's ``--help``
pages, and the documentation (docs/, README.rst, CHANGES.rst).

Comments are not scanned: they are for the people changing the code.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conftest import ROOT, python_env

PACKAGE = Path(ROOT) / "consul_leader"

#: Words that mean something only inside this project's development, each
#: with what to write instead.
INTERNAL = [
    (re.compile(r"\bseeds?\s*#?\d+", re.I),
     "a reference to an internal prototype: name the real concept (client-go's OnStartedLeading, "
     "`consul lock`'s behaviour, ...)"),
    (re.compile(r"\bseed(?:'s)?\s+(?:project|prototype|repo|repository|implementation|code)s?\b", re.I),
     "a reference to an internal prototype"),
    (re.compile(r"\b(?:TODO|FIXME|XXX)\b"), "an unfinished-work marker"),
    (re.compile(r"\bissue\s*#?\d+\b", re.I), "an internal issue number: say what changed"),
    (re.compile(r"\b(?:DESIGN|CONSUL)\.md\b|\bshared/\w|/work/main\b"),
     "a path of the development workspace"),
    (re.compile(r"\b(?:the brief|helper session|CEO)\b", re.I), "development-process vocabulary"),
]


def hits(text: str) -> Iterator[Tuple[int, str, str]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, why in INTERNAL:
            match = pattern.search(line)
            if match:
                yield lineno, match.group(0), why


def string_literals(path: Path) -> Iterator[Tuple[int, str]]:
    """Every string constant of a module (docstrings, messages, help texts,
    the literal parts of f-strings), with the line it starts on."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_the_patterns_catch_what_they_are_for() -> None:
    for text in ["others a chance (seed 002's TermLimit)", "Seed 001's ElectedCh", "see issue #10",
                 "TODO: retry", "as the seed implementation did", "see shared/DESIGN.md"]:
        assert list(hits(text)), text
    for text in ["under seeded random faults", "CHAOS_SEED=20261125", "the random seed; the same seed picks",
                 "client-go's OnStartedLeading", "a session is created"]:
        assert not list(hits(text)), text


def test_no_internal_words_in_the_package_strings() -> None:
    found: List[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for start, value in string_literals(path):
            for offset, word, why in hits(value):
                found.append(f"{path.relative_to(ROOT)}:{start + offset - 1}: {word!r} ({why})")
    assert found == [], "internal words in docstrings or messages:\n" + "\n".join(found)


def test_no_internal_words_in_the_documentation() -> None:
    files = [Path(ROOT, "README.rst"), Path(ROOT, "CHANGES.rst")]
    files += sorted(p for p in Path(ROOT, "docs").rglob("*") if p.suffix in (".rst", ".py", ".txt")
                    and "_build" not in p.parts)
    found = [f"{path.relative_to(ROOT)}:{lineno}: {word!r} ({why})"
             for path in files for lineno, word, why in hits(path.read_text(encoding="utf-8"))]
    assert found == [], "internal words in the documentation:\n" + "\n".join(found)


def cli_help(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "consul_leader.cli", *args, "--help"], capture_output=True,
                            text=True, timeout=60, env=python_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def subcommands() -> List[str]:
    names = re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", cli_help().split("options:")[0], re.M)
    assert "run" in names, "the CLI lists its subcommands"
    return names


@pytest.mark.parametrize("command", [""] + subcommands())
def test_no_internal_words_in_the_cli_help(command: str) -> None:
    text = cli_help(*([command] if command else []))
    found = [f"consul-leader {command} --help: {word!r} ({why})" for _, word, why in hits(text)]
    assert found == []
