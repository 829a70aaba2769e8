"""The distribution a PyPI user gets: the sdist and the wheel build without
deprecation warnings and pass ``twine check --strict``; ``pip show`` names
its license, author and project URLs; one version, the changelog's; its
extras are the integrations only (the contributors' tools are
requirements/*.txt); the sdist carries its whole test suite, and that suite
runs from the unpacked sdist against the package installed into a fresh
virtualenv; the declared floors are the ones the ``lowest`` tox environment
installs, and the Django classifiers are the versions the suite runs on.

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
from typing import Dict, Iterator, List, Tuple

import pytest

import consul_leader

from conftest import ROOT

pytestmark = pytest.mark.packaging

#: What the sdist must hold beyond the package, so that its tests, its docs
#: and `make test` run from it.
SDIST_MUST_HOLD = [
    "LICENSE", "README.rst", "CHANGES.rst", "Makefile", "MANIFEST.in", "tox.ini", "constraints-lowest.txt",
    ".readthedocs.yaml", "setup.cfg", "pyproject.toml", ".ci/run",
    "requirements/test.txt", "requirements/docs.txt", "requirements/bench.txt", "requirements/dev.txt",
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


@pytest.fixture(scope="module")
def installed(dists: Tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Path, Path]]:
    """A fresh virtualenv with a current pip (the one a new user has; older
    ones do not show License-Expression) and the sdist installed, with
    pytest; and the unpacked sdist."""
    sdist, _, _ = dists
    tmp_path = tmp_path_factory.mktemp("installed")
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path / "src", filter="data")
    (unpacked,) = (tmp_path / "src").iterdir()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + ["pip>=25.1"], cwd=tmp_path)
    run(pip + [str(sdist), "pytest", "pytest-timeout"], cwd=tmp_path)
    yield env_dir, unpacked


def test_sdist_installs_into_a_fresh_virtualenv_and_its_own_tests_pass(installed: Tuple[Path, Path]) -> None:
    env_dir, unpacked = installed
    python = str(env_dir / "bin" / "python")
    # The installed copy, not the unpacked tree, is what the tests import.
    where = run([python, "-c", "import consul_leader; print(consul_leader.__file__)"], cwd=env_dir).strip()
    assert where.startswith(str(env_dir)), where
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("PYTEST_ADDOPTS", None)
    report = run([str(env_dir / "bin" / "pytest"), "-q", "-p", "no:cacheprovider",
                  "tests/test_api.py", "tests/test_follower.py"], cwd=unpacked, env=env)
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"failed|error", summary), report


#: The project URLs, by label, that PyPI's sidebar and ``pip show -v`` list.
PROJECT_URL_LABELS = ["Documentation", "Source", "Changelog", "Issues"]


def test_pip_show_names_the_version_license_author_and_project_urls(installed: Tuple[Path, Path]) -> None:
    env_dir, _ = installed
    shown = run([str(env_dir / "bin" / "python"), "-m", "pip", "show", "-v", "consul-leader"], cwd=env_dir)
    fields: Dict[str, str] = dict(line.split(": ", 1) for line in shown.splitlines()
                                  if ": " in line and not line.startswith(" "))
    assert fields["Version"] == consul_leader.__version__
    assert fields["License-Expression"] == "Apache-2.0"
    assert fields["Author"] == "The consul-leader authors"
    urls = shown.split("Project-URLs:\n", 1)[1]
    listed = dict(line.strip().split(", ", 1) for line in urls.splitlines() if line.startswith("  "))
    assert sorted(listed) == sorted(PROJECT_URL_LABELS), shown
    assert all(url.startswith("https://") for url in listed.values()), listed


#: A release's version (PEP 440, as this project writes them) and a
#: changelog heading: "0.2.0 (unreleased)" while the version is 0.2.0.devN.
VERSION = re.compile(r"^(\d+\.\d+\.\d+)((?:\.dev|a|b|rc)\d+)?$")
HEADING = re.compile(r"^(\d+\.\d+\.\d+)( \(unreleased\))?\n-+$", re.M)


def test_one_version_in_the_package_the_metadata_and_the_changelog(dists: Tuple[Path, Path, str]) -> None:
    sdist, wheel, _ = dists
    version = consul_leader.__version__
    match = VERSION.match(version)
    assert match, f"{version!r} is not a version this project writes"
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.HeaderParser().parsestr(zf.read(meta_name).decode("utf-8"))
    assert meta["Version"] == version
    assert sdist.name == f"consul_leader-{version}.tar.gz" and wheel.name.startswith(f"consul_leader-{version}-")
    # setup.cfg reads the package's version; it writes none of its own.
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg.get("metadata", "version") == "attr: consul_leader.__version__"
    top = HEADING.search(Path(ROOT, "CHANGES.rst").read_text(encoding="utf-8"))
    assert top, "CHANGES.rst has no version heading"
    assert top.group(1) == match.group(1), f"CHANGES.rst's top heading is {top.group(1)}, the package {version}"
    assert bool(top.group(2)) == bool(match.group(2)), \
        f"a pre-release ({version}) is the changelog's '(unreleased)' version, a release is not"


def test_the_extras_are_the_integrations_and_the_contributor_tools_are_requirements_files(
        dists: Tuple[Path, Path, str]) -> None:
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.HeaderParser().parsestr(zf.read(meta_name).decode("utf-8"))
    assert sorted(meta.get_all("Provides-Extra") or []) == \
        ["apscheduler", "celery", "django", "fastapi", "flask", "prometheus"]
    requirements = Path(ROOT, "requirements")
    dev = (requirements / "dev.txt").read_text(encoding="utf-8").splitlines()
    for name in ("test", "docs", "bench"):
        assert (requirements / f"{name}.txt").is_file() and f"-r {name}.txt" in dev
    assert "pip install --disable-pip-version-check -e . -r requirements/dev.txt" in \
        Path(ROOT, "Makefile").read_text(encoding="utf-8")
    assert "deps = -r requirements/test.txt" in Path(ROOT, "tox.ini").read_text(encoding="utf-8")
    assert "requirements: requirements/docs.txt" in Path(ROOT, ".readthedocs.yaml").read_text(encoding="utf-8")


def _minor(version: str) -> Tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_the_django_classifiers_are_the_versions_the_suite_runs_on(dists: Tuple[Path, Path, str]) -> None:
    """The lowest declared Django (tox's ``lowest``) and the newest (tox's
    ``django-newest``, pinned to its minor version), which the suite runs
    on; the full suite's own Django lies between them."""
    import importlib.metadata

    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.HeaderParser().parsestr(zf.read(meta_name).decode("utf-8"))
    claimed = {_minor(c.rsplit(" :: ", 1)[1]) for c in meta.get_all("Classifier") or []
               if re.fullmatch(r"Framework :: Django :: [\d.]+", c)}
    pins = dict(line.split("==") for line in Path(ROOT, "constraints-lowest.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(os.path.join(ROOT, "tox.ini"))
    found = re.search(r"^django==(\d+\.\d+)\.\*$", tox.get("testenv:django-newest", "deps"), re.M)
    assert found, "tox's django-newest pins the newest Django's minor version"
    lowest, newest, here = _minor(pins["django"]), _minor(found.group(1)), _minor(importlib.metadata.version("django"))
    assert claimed == {lowest, newest}, f"claimed {sorted(claimed)}; tested: {lowest} and {newest}"
    assert lowest <= here <= newest, f"this run's Django {here} is outside the tested {lowest} to {newest}"


VERSION_MARK = re.compile(r"\.\. version(?:added|changed):: (\d+)\.(\d+)")


def test_no_versionadded_or_versionchanged_names_a_version_after_the_package_version() -> None:
    major, minor = (int(part) for part in consul_leader.__version__.split(".")[:2])
    ahead: List[str] = []
    files = sorted(Path(ROOT, "consul_leader").rglob("*.py")) + sorted(Path(ROOT, "docs").rglob("*.rst"))
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for found in VERSION_MARK.finditer(line):
                if (int(found.group(1)), int(found.group(2))) > (major, minor):
                    ahead.append(f"{path.relative_to(ROOT)}:{lineno}: {found.group(0)}")
    assert ahead == [], f"ahead of {consul_leader.__version__}:\n" + "\n".join(ahead)
