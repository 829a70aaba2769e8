"""The code blocks of the documentation (README.rst and docs/**/*.rst), and
the notes for the tests that an rst comment before a block carries.

A block is Python when it is a ``.. code-block:: python`` (a ``::`` literal
that Python would parse must say so: Sphinx highlights it as Python); it is
a shell block when it is a ``console``, ``sh``, ``bash`` or ``shell``
code-block, or a ``::`` literal whose first command is a program (``$ `` and
``VAR=value`` prefixes aside). Notes are rst comments, invisible in the
built docs, placed before the block (before the paragraph that ends in
``::`` for a literal); each starts with ``.. test:``:

``.. test: not run, <why>``
    the block is deliberately a fragment (or needs what a test cannot
    have); the reason is required.
``.. test: run by <tests/file.py>``
    a test of its own runs it (that file names the page).
``.. test: setup`` and an indented body
    Python the reader's own program supplies (their function, their
    database), run before the block; the block itself runs as written.
``.. test: check`` and an indented body
    Python run after the block: what the block must have done.

tests/test_doc_blocks.py runs every Python block and the shell blocks it
can, and holds every other block to a note.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

SHELL_LANGUAGES = {"console", "sh", "bash", "shell"}
#: The programs a shell block may start (its first word).
PROGRAMS = {"consul-leader", "consul", "python", "pip", "make", "celery", "gunicorn", "uvicorn"}
#: A marker must sit this close (in lines) above its block.
MAX_GAP = 8

DIRECTIVE = re.compile(r"^(\s*)\.\. code-block::\s*(\S+)\s*$")
MARKER = re.compile(r"^(\s*)\.\. test: (.+?)\s*$")


@dataclass
class Note:
    kind: str  # "not run", "run by", "setup", "check"
    argument: str
    body: str
    line: int


@dataclass
class Block:
    path: Path
    line: int  # of the directive, or of the line ending in "::"
    language: str  # "python", "shell" or "other"
    code: str
    notes: List[Note] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"

    def note(self, kind: str) -> Optional[Note]:
        return next((n for n in self.notes if n.kind == kind), None)

    def commands(self) -> List[str]:
        """A shell block's commands, prompts and comments left out."""
        found = []
        for line in self.code.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            elif self.language == "shell" and "$ " in self.code:
                continue  # a console block: lines without a prompt are output
            if line and not line.startswith("#"):
                found.append(line)
        return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _body(lines: List[str], start: int, indent: int) -> tuple[List[str], int]:
    """The lines from *start* that are blank or indented deeper than *indent*."""
    body: List[str] = []
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    return body, i


def _parse_note(text: str, body: List[str], line: int) -> Note:
    code = textwrap.dedent("\n".join(body)).strip("\n")
    for kind in ("not run", "run by"):
        if text.startswith(kind):  # its body continues the reason
            argument = " ".join([text[len(kind):].lstrip(" ,:")] + code.split())
            return Note(kind, argument.strip(), "", line)
    if text in ("setup", "check"):
        return Note(text, "", code, line)
    raise ValueError(f"line {line}: unknown note '.. test: {text}'")


def _first_command(code: str) -> Optional[str]:
    for line in code.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("$ "):
            line = line[2:]
        words = line.split()
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        return words[0] if words else None
    return None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def blocks_of(path: Path, root: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: List[Note] = []
    last_note_line = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        directive = DIRECTIVE.match(line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        if marker:
            body, i = _body(lines, i + 1, _indent(line))
            pending.append(_parse_note(marker.group(2), body, i))
            last_note_line = i
            continue
        if directive or literal:
            indent = _indent(line)
            j = i + 1
            while directive and j < len(lines) and re.match(r"^\s+:[\w-]+:", lines[j]):
                j += 1  # the directive's options
            body, end = _body(lines, j, indent)
            code = textwrap.dedent("\n".join(body)).strip("\n")
            if directive:
                given = directive.group(2)
                language = "python" if given in ("python", "python3", "pycon") else \
                    "shell" if given in SHELL_LANGUAGES else "other"
            else:
                language = "python-literal" if _parses(code) else \
                    "shell" if _first_command(code) in PROGRAMS else "other"
            if language == "shell" and _first_command(code) not in PROGRAMS:
                language = "other"  # a console block of output alone
            if pending and i - last_note_line > MAX_GAP:
                raise ValueError(f"{path}:{last_note_line}: a '.. test:' note {i - last_note_line} lines "
                                 f"above its block (at most {MAX_GAP})")
            yield Block(path.relative_to(root), i + 1, language, code, pending)
            pending = []
            i = end
            continue
        i += 1
    if pending:
        raise ValueError(f"{path}: a '.. test:' note with no block after it")


def documentation(root: Path) -> List[Path]:
    return [root / "README.rst"] + sorted(p for p in (root / "docs").rglob("*.rst") if "_build" not in p.parts)


def all_blocks(root: Path) -> List[Block]:
    return [block for path in documentation(root) for block in blocks_of(path, root)]


def by_place(root: Path) -> Dict[str, Block]:
    return {block.where: block for block in all_blocks(root)}
