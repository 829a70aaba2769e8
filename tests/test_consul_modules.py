"""consul-leader works whichever distribution installed the ``consul``
module: python-consul, python-consul2, py-consul, or two of them installed
over each other (pip mixes their files into one package and says nothing).

The library sends its own requests through ``requests``; a ``consul.Consul``
passed as ``consul=`` gives only its settings. tox runs this file once per
case (``consul-*`` environments), each naming in ``CONSUL_MODULE_CASE`` the
distributions it installed, in order, so that a case cannot silently test
another one.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

from consul_leader import Candidate, Follower
from consul_leader.testing import ConsulAgent

DISTRIBUTIONS = ("python-consul", "python-consul2", "py-consul")


def installed() -> list[str]:
    found = []
    for name in DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def test_the_environment_holds_the_distributions_its_case_names() -> None:
    case = os.environ.get("CONSUL_MODULE_CASE")
    if case is None:
        # The full suite's virtualenv: py-consul, from the test extra.
        assert "py-consul" in installed()
        return
    assert sorted(installed()) == sorted(case.split(",")), f"case {case!r}, installed {installed()}"


def test_importing_consul_leader_imports_no_consul_module() -> None:
    code = "import sys, consul_leader, consul_leader.cli; print('consul' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_consul_client_of_the_installed_module_elects_through_its_settings(
        consul_agent: ConsulAgent, key: str) -> None:
    import consul

    host, port = consul_agent.address.rsplit(":", 1)
    client = consul.Consul(host=host, port=int(port))
    with Candidate(key, consul=client, ttl=1) as candidate:
        assert candidate.wait_for_leadership(15)
        with Follower(key, consul=client) as follower:
            assert follower.wait_for_leader(10) == candidate.identity
        # The user's own client still works beside the library's requests.
        _, entry = client.kv.get(key)
        assert entry is not None and entry["Session"]


def test_a_client_that_is_not_a_consul_client_is_refused() -> None:
    with pytest.raises(TypeError, match="consul must be a consul.Consul client"):
        Candidate("k", consul=object())
