"""Where and how to reach the Consul agent: arguments first, then the
environment variables the ``consul`` CLI reads."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, ConfigurationTypeError


@dataclass(frozen=True)
class ConsulConfig:
    """Where and how to reach the Consul agent.

    Built by :meth:`from_args`, which fills what is not given from the
    environment variables the ``consul`` CLI reads. The token is hidden from
    ``repr()`` so that it never reaches a log.

    :ivar host: the agent's host name or IP address.
    :ivar port: the agent's HTTP(S) port.
    :ivar scheme: ``"http"`` or ``"https"``.
    :ivar token: the ACL token, or None.
    :ivar datacenter: the datacenter to address, or None for the agent's own.
    :ivar verify: TLS verification: True, False or a CA bundle path.
    :ivar cert: client certificate: a path, a ``(cert, key)`` pair, or None.
    :ivar timeout: seconds allowed for a request that does not block.
    :ivar tls_server_name: the name the agent's certificate must carry (and
        the TLS SNI name), when it is not the host connected to; None: the
        host.
    """

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None
    datacenter: str | None = None
    verify: bool | str = True
    cert: None | str | tuple[str, str] = None
    timeout: float = 5.0
    tls_server_name: str | None = None

    def __repr__(self) -> str:
        server_name = f", tls_server_name={self.tls_server_name!r}" if self.tls_server_name else ""
        return (f"ConsulConfig(address={self.address!r}, datacenter={self.datacenter!r}, "
                f"token={'<hidden>' if self.token else None}, verify={self.verify!r}, "
                f"cert={self.cert!r}, timeout={self.timeout!r}{server_name})")

    @property
    def address(self) -> str:
        """The agent's address as ``scheme://host:port``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def from_args(
        cls,
        address: str | None = None,
        token: str | None = None,
        datacenter: str | None = None,
        verify: None | bool | str = None,
        cert: None | str | tuple[str, str] = None,
        timeout: float = 5.0,
        environ: dict[str, str] | None = None,
        token_file: str | None = None,
        tls_server_name: str | None = None,
    ) -> ConsulConfig:
        """Resolve the settings: arguments first (*token*, else the file
        *token_file*), then ``CONSUL_HTTP_ADDR``,
        ``CONSUL_HTTP_TOKEN`` (or ``CONSUL_HTTP_TOKEN_FILE``), ``CONSUL_HTTP_SSL``,
        ``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT``,
        ``CONSUL_CLIENT_KEY`` and ``CONSUL_TLS_SERVER_NAME``, then the defaults
        (``127.0.0.1:8500``). ``CONSUL_CAPATH`` (a folder of CA files) and
        ``CONSUL_NAMESPACE`` (Consul Enterprise) are refused with what to do
        instead, rather than ignored.

        :raises ConfigurationError: an address that does not parse, a
            certificate file that does not exist, a timeout that is not
            positive, ``CONSUL_CAPATH`` without a CA file, ``CONSUL_NAMESPACE``.
        """
        env = os.environ if environ is None else environ
        if env.get("CONSUL_NAMESPACE"):
            raise ConfigurationError(
                f"CONSUL_NAMESPACE={env['CONSUL_NAMESPACE']!r} is set, but consul-leader does not support Consul "
                f"Enterprise namespaces: its keys and sessions would land in the default namespace, apart from "
                f"what the consul CLI shows. Unset CONSUL_NAMESPACE for this process.")
        source = "address" if address is not None else "CONSUL_HTTP_ADDR"
        raw = address if address is not None else env.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        if not isinstance(raw, str):
            raise ConfigurationTypeError(f"address must be a str like '127.0.0.1:8500', got {type(raw).__name__}")
        ssl = env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true", "yes")
        scheme, host, port = _parse_address(raw, source, "https" if ssl else "http")

        if token is None and token_file is not None:
            token = _read_token_file(token_file, "token_file")
        elif token is None:
            token = env.get("CONSUL_HTTP_TOKEN") or None
            env_file = env.get("CONSUL_HTTP_TOKEN_FILE")
            if token is None and env_file:
                token = _read_token_file(env_file, "CONSUL_HTTP_TOKEN_FILE")
        elif not isinstance(token, str):
            raise ConfigurationTypeError(f"token must be a str, got {type(token).__name__}")
        if token and not (token.isascii() and token.isprintable() and not any(ch.isspace() for ch in token)):
            # Never echo it: it is a secret, even when malformed.
            raise ConfigurationError("token (or CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE) must be an ACL token: "
                                     "printable ASCII without spaces; the value given is not (not shown)")

        if datacenter is not None and (not isinstance(datacenter, str) or not datacenter):
            raise ConfigurationError(f"datacenter must be a non-empty str or None, got {datacenter!r}")

        if verify is None:
            if env.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in ("0", "false", "no"):
                verify = False
            elif env.get("CONSUL_CACERT"):
                verify = env["CONSUL_CACERT"]
            elif env.get("CONSUL_CAPATH"):
                # As with the consul CLI, a CA file given wins over the folder.
                raise ConfigurationError(
                    f"CONSUL_CAPATH={env['CONSUL_CAPATH']!r} is set, but consul-leader reads its CA certificates "
                    f"from one file: give it as CONSUL_CACERT or verify= (for example a bundle made with "
                    f"cat {env['CONSUL_CAPATH'].rstrip('/')}/*.pem > consul-ca.pem)")
            else:
                verify = True
        if isinstance(verify, str) and not os.path.exists(verify):
            raise ConfigurationError(f"verify (or CONSUL_CACERT) names a CA file that does not exist: {verify!r}")
        if not isinstance(verify, (bool, str)):
            raise ConfigurationTypeError(f"verify must be a bool or a CA file path, got {type(verify).__name__}")

        if cert is None and env.get("CONSUL_CLIENT_CERT"):
            client_key = env.get("CONSUL_CLIENT_KEY")
            cert = (env["CONSUL_CLIENT_CERT"], client_key) if client_key else env["CONSUL_CLIENT_CERT"]
        if isinstance(cert, list):
            cert = tuple(cert)
        if cert is not None and not isinstance(cert, str) and not (isinstance(cert, tuple) and len(cert) == 2):
            raise ConfigurationTypeError(f"cert must be a file path or a (cert_file, key_file) pair, "
                                         f"got {type(cert).__name__} {cert!r}")
        for path in (cert,) if isinstance(cert, str) else (cert or ()):
            if not isinstance(path, str) or not os.path.isfile(path):
                raise ConfigurationError(
                    f"cert (or CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) names a file that does not exist: {path!r}")

        if tls_server_name is None:
            tls_server_name = env.get("CONSUL_TLS_SERVER_NAME") or None
        if tls_server_name is not None and (not isinstance(tls_server_name, str) or not tls_server_name.strip()
                                            or any(ch.isspace() for ch in tls_server_name)):
            raise ConfigurationError(f"tls_server_name (or CONSUL_TLS_SERVER_NAME) must be a host name, "
                                     f"got {tls_server_name!r}")

        return cls(host=host, port=port, scheme=scheme, token=token, datacenter=datacenter,
                   verify=verify, cert=cert, timeout=_check_timeout(timeout), tls_server_name=tls_server_name)

    @classmethod
    def resolve(cls, *, consul: Any = None, address: str | None = None, token: str | None = None,
                token_file: str | None = None, datacenter: str | None = None,
                verify: None | bool | str = None, cert: None | str | tuple[str, str] = None,
                timeout: float = 5.0) -> ConsulConfig:
        """The one way :class:`~consul_leader.Candidate`,
        :class:`~consul_leader.Follower` and the ``consul-leader`` command
        turn their connection arguments into settings: an existing
        ``consul.Consul`` (*consul*) or the other arguments, not both; what
        is not given comes from the ``consul`` CLI's environment variables.

        :raises ConfigurationError: both *consul* and another connection
            argument, or an argument that :meth:`from_args` refuses."""
        if consul is not None:
            given = [name for name, value in (("address", address), ("token", token), ("token_file", token_file),
                                              ("datacenter", datacenter), ("verify", verify), ("cert", cert))
                     if value is not None]
            if given:
                raise ConfigurationTypeError(f"give either consul= or {', '.join(given)}, not both: consul= "
                                             f"already says where and how to connect")
            return cls.from_consul(consul, timeout=timeout)
        return cls.from_args(address=address, token=token, token_file=token_file, datacenter=datacenter,
                             verify=verify, cert=cert, timeout=timeout)

    @classmethod
    def from_consul(cls, client: Any, timeout: float = 5.0) -> ConsulConfig:
        """Take the settings of an existing ``consul.Consul`` (py-consul,
        python-consul or python-consul2). Only its settings are used: consul-leader makes its own
        connections, bounded by timeouts and private to each thread.

        :raises ConfigurationTypeError: *client* is not a ``consul.Consul``."""
        http: Any = getattr(client, "http", None)
        if not all(hasattr(http, name) for name in ("host", "port", "scheme", "verify", "cert")) or \
                not hasattr(client, "token") or not hasattr(client, "dc"):
            raise ConfigurationTypeError(f"consul must be a consul.Consul client (py-consul, python-consul or "
                                         f"python-consul2), got {type(client).__name__}")
        return cls(host=http.host, port=int(http.port), scheme=http.scheme, token=client.token or None,
                   datacenter=client.dc, verify=http.verify, cert=http.cert, timeout=_check_timeout(timeout))


def _read_token_file(path: str, source: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise ConfigurationError(f"{source}={path!r} cannot be read: {exc.strerror}") from None


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigurationTypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not 0 < timeout <= 300:
        raise ConfigurationError(f"timeout must be in (0, 300] seconds, got {timeout!r}")
    return float(timeout)


def _parse_address(raw: str, source: str, default_scheme: str) -> tuple[str, str, int]:
    text = raw.strip()
    if text.startswith("unix://"):
        raise ConfigurationError(f"{source}={raw!r}: unix sockets are not supported; give host:port")
    try:
        parsed = urllib.parse.urlsplit(text if "//" in text else "//" + text)
        port = parsed.port
    except ValueError:  # an unbalanced '[' of an IPv6 address, a port that is no number
        parsed, port = urllib.parse.urlsplit(""), -1
    scheme = parsed.scheme or default_scheme
    host = parsed.hostname or ""
    if scheme not in ("http", "https") or not host or not (host.isascii() and host.isprintable()) or \
            any(ch.isspace() for ch in host) or (port is not None and not 0 < port < 65536):
        raise ConfigurationError(
            f"{source}={raw!r} is not an agent address; expected host:port or http(s)://host:port")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address: URLs need the brackets
    return scheme, host, port if port is not None else (8501 if scheme == "https" else 8500)

