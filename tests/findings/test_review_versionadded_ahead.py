"""Review: three docstrings say "versionadded:: 0.3" while the next release
is 0.2.0 (consul_leader.__version__ and the top of CHANGES.rst):
``Elector`` (elector.py, two) and ``Candidate.set_term_hook``
(candidate.py). A reader of the 0.2 docs is told a name arrives in a
version that does not exist yet. The rest of the package was set to 0.2;
these files were being restructured at the time. Fixing it: write 0.2 there,
and move this test into tests/test_packaging.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import consul_leader

from conftest import ROOT

MARK = re.compile(r"\.\. version(?:added|changed):: (\d+)\.(\d+)")


def test_no_versionadded_or_versionchanged_names_a_version_after_the_package_version() -> None:
    major, minor = (int(part) for part in consul_leader.__version__.split(".")[:2])
    ahead: List[str] = []
    files = sorted(Path(ROOT, "consul_leader").rglob("*.py")) + sorted(Path(ROOT, "docs").rglob("*.rst"))
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for found in MARK.finditer(line):
                if (int(found.group(1)), int(found.group(2))) > (major, minor):
                    ahead.append(f"{path.relative_to(ROOT)}:{lineno}: {found.group(0)}")
    assert ahead == [], f"ahead of {consul_leader.__version__}:\n" + "\n".join(ahead)
