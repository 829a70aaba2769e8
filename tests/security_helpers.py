"""Real Consul agents with ACLs or TLS switched on, for the security tests.

ACLs: :func:`acl_agent` starts an agent with ``default_policy = "deny"`` and
bootstraps it; :func:`make_token` makes a token from HCL rules through the
HTTP API. TLS: :func:`make_pki` runs ``consul tls ca create`` and ``consul tls
cert create`` in a folder; :func:`tls_agent` serves HTTPS with those files.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import requests

from consul_leader.testing import ConsulAgent, find_consul

HERE = os.path.dirname(os.path.abspath(__file__))
SECURITY_DOC = os.path.join(os.path.dirname(HERE), "docs", "security.rst")

ACL_CONFIG = {"acl": {"enabled": True, "default_policy": "deny", "enable_token_persistence": True}}


def acl_agent() -> ConsulAgent:
    """Start an agent that denies by default and bootstrap its ACLs; its
    ``token`` is then the management token."""
    agent = ConsulAgent(config=ACL_CONFIG).start()
    deadline = time.monotonic() + 30
    while True:
        r = requests.put(f"{agent.url}/v1/acl/bootstrap", timeout=5)
        if r.status_code == 200:
            agent.token = r.json()["SecretID"]
            return agent
        # Right after the Raft election the ACL system may still be starting.
        if time.monotonic() > deadline:
            agent.stop()
            raise RuntimeError(f"ACL bootstrap failed: {r.status_code} {r.text}\n{agent.log_tail()}")
        time.sleep(0.1)


def _api(agent: ConsulAgent, method: str, path: str, **kwargs: Any) -> Any:
    r = requests.request(method, f"{agent.url}{path}", headers={"X-Consul-Token": agent.token or ""},
                         timeout=10, **kwargs)
    r.raise_for_status()
    return r.json()


def node_name(agent: ConsulAgent) -> str:
    """The agent's node name, which session and node rules are about."""
    return str(_api(agent, "GET", "/v1/agent/self")["Config"]["NodeName"])


def make_policy(agent: ConsulAgent, rules: str) -> str:
    """Create a policy from HCL *rules*; return its ID."""
    return str(_api(agent, "PUT", "/v1/acl/policy", json={"Name": f"p-{uuid.uuid4().hex[:12]}",
                                                          "Rules": rules})["ID"])


def make_token(agent: ConsulAgent, rules: str) -> Tuple[str, str]:
    """Create a token whose one policy has *rules*; return (secret, accessor)."""
    token = _api(agent, "PUT", "/v1/acl/token", json={"Policies": [{"ID": make_policy(agent, rules)}]})
    return str(token["SecretID"]), str(token["AccessorID"])


def set_token_rules(agent: ConsulAgent, accessor: str, rules: str) -> None:
    """Replace the policies of an existing token by one with *rules*."""
    _api(agent, "PUT", f"/v1/acl/token/{accessor}", json={"Policies": [{"ID": make_policy(agent, rules)}]})


def documented_policy(prefix: str, node: str) -> str:
    """The HCL policy that docs/security.rst tells users to copy, for *prefix*
    (the folder of the election keys) and *node* (the agent's node name)."""
    with open(SECURITY_DOC, encoding="utf-8") as fh:
        text = fh.read()
    block = re.search(r"\.\. code-block:: text\n    :caption: beat-leader\.hcl\n\n((?:    .*\n|\n)+)", text)
    assert block is not None, "docs/security.rst has no beat-leader.hcl block"
    rules = "\n".join(line[4:] for line in block.group(1).splitlines())
    assert '"service/beat/"' in rules and '"my-node"' in rules, rules
    return rules.replace('"service/beat/"', f'"{prefix}/"') \
        .replace('/participants/service/beat/"', f'/participants/{prefix}/"').replace('"my-node"', f'"{node}"')


@dataclass(frozen=True)
class PKI:
    """Certificates made by ``consul tls``: a CA, a server and a client
    certificate signed by it, and a second CA that signed none of them."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def make_pki(folder: str) -> PKI:
    """Create the certificates with the real ``consul tls`` commands in *folder*."""
    consul = find_consul()

    def run(*args: str, cwd: str = folder) -> None:
        subprocess.run([consul, "tls", *args], cwd=cwd, check=True, capture_output=True, timeout=60)

    run("ca", "create")
    run("cert", "create", "-server", "-dc", "dc1")
    run("cert", "create", "-client", "-dc", "dc1")
    other = os.path.join(folder, "other")
    os.mkdir(other)
    run("ca", "create", cwd=other)
    p = lambda *name: os.path.join(folder, *name)  # noqa: E731
    return PKI(ca=p("consul-agent-ca.pem"), server_cert=p("dc1-server-consul-0.pem"),
               server_key=p("dc1-server-consul-0-key.pem"), client_cert=p("dc1-client-consul-0.pem"),
               client_key=p("dc1-client-consul-0-key.pem"), other_ca=p("other", "consul-agent-ca.pem"))


def tls_agent(pki: PKI, require_client_cert: bool = False,
              extra: Optional[Dict[str, Any]] = None) -> Tuple[ConsulAgent, str]:
    """Start an agent serving HTTPS with the server certificate; return it and
    its HTTPS address. With *require_client_cert* (``verify_incoming_https``)
    the readiness probe, which has no client certificate, uses the plain HTTP
    port that the agent keeps open."""
    agent = ConsulAgent(scheme="http" if require_client_cert else "https")
    agent.config = {"ports": {"https": agent.https_port}, "cert_file": pki.server_cert,
                    "key_file": pki.server_key, "ca_file": pki.ca,
                    "verify_incoming_https": require_client_cert, **(extra or {})}
    agent.verify = pki.ca
    agent.start()
    return agent, f"https://127.0.0.1:{agent.https_port}"
