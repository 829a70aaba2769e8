"""The distribution a PyPI user gets: the sdist and the wheel build without
deprecation warnings and pass ``twine check --strict``; the sdist carries
its whole test suite, and that suite runs from the unpacked sdist against
the package installed into a fresh virtualenv; the declared floors are the
ones the ``lowest`` tox environment installs.

Building and installing takes about half a minute, so these tests run in the
full suite and in tox's ``lowest`` environment, not in every interpreter's
core run (see tox.ini)."""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conftest import ROOT

pytestmark = pytest.mark.packaging

#: What the sdist must hold beyond the package, so that its tests, its docs
#: and `make test` run from it.
SDIST_MUST_HOLD = [
    "LICENSE", "README.rst", "CHANGES.rst", "Makefile", "MANIFEST.in", "tox.ini", "constraints-lowest.txt",
    ".readthedocs.yaml", "setup.cfg", "pyproject.toml", ".ci/run",
    "scripts/install-consul", "scripts/install-redis", "scripts/lowest-constraints",
    "tests/conftest.py", "tests/security_helpers.py", "tests/test_packaging.py",
    "tests/chaos/__init__.py", "tests/chaos/test_chaos.py", "tests/djangoproject/manage.py",
    "docs/conf.py", "docs/index.rst", "docs/examples/quickstart.py",
    "benchmarks/__init__.py", "consul_leader/py.typed",
]


def run(cmd: List[str], cwd: Path | str = ROOT, env: dict | None = None, timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Path, Path, str]]:
    """The sdist and the wheel (built from that sdist, as `python -m build`
    does), and what the build printed."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PYTHONWARNINGS="default")
    log = run([sys.executable, "-m", "build", "--outdir", str(out), ROOT], env=env)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    yield sdist, wheel, log


def test_build_prints_no_deprecation_warning_and_twine_check_strict_passes(dists: Tuple[Path, Path, str]) -> None:
    sdist, wheel, log = dists
    flagged = [line for line in log.splitlines() if "deprecat" in line.lower()]
    assert flagged == [], "the build printed deprecation warnings:\n" + "\n".join(flagged)
    report = run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    assert report.count("PASSED") == 2, report


def test_wheel_metadata_declares_license_python_and_floors(dists: Tuple[Path, Path, str]) -> None:
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.HeaderParser().parsestr(zf.read(meta_name).decode("utf-8"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License ::" not in " ".join(meta.get_all("Classifier") or []), "PEP 639: the expression replaces it"
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    requires = meta.get_all("Requires-Dist") or []
    assert not [r for r in requires if "consul" in r.lower() and "extra ==" not in r], f"no consul module: {requires}"
    assert any(r.startswith("urllib3>=") for r in requires), "client.py imports urllib3"
    assert meta["Keywords"]


def test_sdist_holds_the_test_suite_docs_and_build_files(dists: Tuple[Path, Path, str]) -> None:
    sdist, _, _ = dists
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    missing = [name for name in SDIST_MUST_HOLD if name not in names]
    assert missing == []
    repo_tests = {str(p.relative_to(ROOT)) for p in Path(ROOT, "tests").rglob("*.py")}
    assert sorted(repo_tests - names) == [], "every test module ships"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert top.startswith("consul_leader-")


def test_sdist_installs_into_a_fresh_virtualenv_and_its_own_tests_pass(
        dists: Tuple[Path, Path, str], tmp_path: Path) -> None:
    sdist, _, _ = dists
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    (unpacked,) = (tmp_path / "src").iterdir()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(sdist), "pytest", "pytest-timeout"],
        cwd=tmp_path)
    # The installed copy, not the unpacked tree, is what the tests import.
    where = run([python, "-c", "import consul_leader; print(consul_leader.__file__)"], cwd=tmp_path).strip()
    assert where.startswith(str(env_dir)), where
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("PYTEST_ADDOPTS", None)
    report = run([str(env_dir / "bin" / "pytest"), "-q", "-p", "no:cacheprovider",
                  "tests/test_api.py", "tests/test_follower.py"], cwd=unpacked, env=env)
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"failed|error", summary), report


def test_constraints_lowest_is_what_setup_cfg_declares() -> None:
    run([sys.executable, os.path.join(ROOT, "scripts", "lowest-constraints"), "--check"])
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    pins = dict(line.split("==") for line in Path(ROOT, "constraints-lowest.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert "py-consul" not in pins and "urllib3" in pins
    assert cfg.get("options", "python_requires") == ">=3.10"
