"""``consul-leader status`` and ``consul-leader watch``, and the connection
options every sub-command shares."""

from __future__ import annotations

import argparse
import json
import os
import signal
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

from ..client import ConsulClient
from ..config import ConsulConfig
from ..errors import ConfigurationError, ConsulLeaderError
from ..follower import Follower, LeaderInfo
from ..roster import Contender, contenders_of
from ..validation import check_key
from .codes import EXIT_NO_LEADER, EXIT_OK

__all__ = ["connection", "status", "watch"]


def connection(args: argparse.Namespace) -> Dict[str, Any]:
    """Candidate/Follower keyword arguments from the connection options;
    ConsulConfig.from_args fills the rest from the environment."""
    if args.client_key and not args.client_cert:
        raise ConfigurationError("-client-key needs -client-cert")
    if args.ca_path:
        raise ConfigurationError(f"-ca-path {args.ca_path}: a directory of CA certificates is not supported; "
                                 "put them in one file and give it with -ca-file (or CONSUL_CACERT)")
    if args.tls_server_name:
        # The library reads the name where the consul CLI does; Candidate and
        # Follower take no argument for it. The flag overrides the variable,
        # as the consul CLI's flags do.
        os.environ["CONSUL_TLS_SERVER_NAME"] = args.tls_server_name
    cert: Any = None
    if args.client_cert:
        cert = (args.client_cert, args.client_key) if args.client_key else args.client_cert
    token = args.token
    if token is None and args.token_file:
        # Read where the library reads CONSUL_HTTP_TOKEN_FILE, with the same checks.
        token = ConsulConfig.resolve(address=args.address, token_file=args.token_file).token
    return {"address": args.address, "token": token, "datacenter": args.datacenter, "verify": args.ca_file,
            "cert": cert}


def _iso(unix: Optional[float]) -> Optional[str]:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()


def _since(info: LeaderInfo) -> Optional[float]:
    """When the leader took the lock, or None when the key's flags hold no
    such time: a time to come is another tool's flags (consul lock's)."""
    if info.since is None or info.since > _now() + 86400:
        return None
    return info.since


def _shown(identity: str) -> str:
    # consul lock writes no value into its lock: say so rather than nothing.
    return identity or "(an empty value, as consul lock writes)"


def _info_dict(key: str, info: LeaderInfo) -> Dict[str, Any]:
    since = _since(info)
    return {"key": key, "leader": info.identity, "since": since, "since_iso": _iso(since),
            "fencing_token": info.modify_index, "session": info.session}


# -- status -----------------------------------------------------------------

def _contender_dict(contender: Contender) -> Dict[str, Any]:
    return {"identity": contender.identity, "host": contender.host, "pid": contender.pid,
            "since": contender.since, "since_iso": _iso(contender.since), "leading": contender.leading,
            "alive": contender.alive, "lock_delay": contender.lock_delay}


def _contender_line(contender: Contender) -> str:
    """One contender, as docs/cli.rst documents the line."""
    return (f"  {_shown(contender.identity)}  host={contender.host or '?'} pid={contender.pid or '?'} "
            f"since={_iso(contender.since) or '?'} {'leading' if contender.leading else 'waiting'} "
            f"{'alive' if contender.alive else 'gone'}")


def status(args: argparse.Namespace, command: List[str]) -> int:
    """``consul-leader status``: print who leads and who takes part; 0 if
    someone leads, 3 if nobody."""
    key = check_key(args.key)
    client = ConsulClient(ConsulConfig.from_args(**connection(args)))
    _, entry = client.get_key(key)
    info = LeaderInfo.from_entry(entry)
    try:
        contenders: Optional[List[Contender]] = contenders_of(client, key)
        unread = ""
    except ConsulLeaderError as exc:  # the roster's own ACL rule may be missing: the leader is still news
        contenders, unread = None, str(exc)
    if args.json:
        print(json.dumps(dict(_info_dict(key, info), contenders=None if contenders is None else
                              [_contender_dict(c) for c in contenders])))
        return EXIT_OK if info.identity is not None else EXIT_NO_LEADER
    if info.identity is None:
        print(f"key:           {key}\nleader:        (none)")
    else:
        at = _since(info)
        since = "unknown" if at is None else f"{_iso(at)} ({_now() - at:.1f} s ago)"
        print(f"key:           {key}\nleader:        {_shown(info.identity)}\nsince:         {since}\n"
              f"fencing token: {info.modify_index}\nsession:       {info.session}")
    if contenders is None:
        print(f"contenders:    (cannot be read: {unread})")
    else:
        print(f"contenders:    {len(contenders)}")
        for contender in contenders:
            print(_contender_line(contender))
    return EXIT_OK if info.identity is not None else EXIT_NO_LEADER


# -- watch ------------------------------------------------------------------

class _Interrupted(Exception):
    pass


def watch(args: argparse.Namespace, command: List[str]) -> int:
    """``consul-leader watch``: print each change of leader until SIGINT/SIGTERM; 0."""
    follower = Follower(check_key(args.key), **connection(args))

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted()

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    follower.start()
    try:
        for identity in follower.changes():
            info = follower.info()
            if info.identity != identity:  # changed again meanwhile; the next line shows it
                info = LeaderInfo(identity=identity)
            if args.json:
                print(json.dumps({"time": _iso(_now()), **_info_dict(follower.key, info)}), flush=True)
            elif identity is None:
                print(f"{_iso(_now())} (no leader)", flush=True)
            else:
                print(f"{_iso(_now())} {_shown(identity)} (fencing token {info.modify_index})", flush=True)
    except _Interrupted:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        follower.stop()
    return EXIT_OK

