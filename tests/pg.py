"""A throwaway PostgreSQL cluster (Debian's package, found or installed by
scripts/install-postgresql): initdb in a temporary directory, pg_ctl on a
free loopback port, trust authentication, removed afterwards. PostgreSQL
refuses to run as root; as root the cluster belongs to the ``postgres``
user the package creates, and runs as that user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from typing import List, Optional

from consul_leader.testing import free_ports

from conftest import ROOT


class PostgresCluster:
    def __init__(self) -> None:
        self.bindir = subprocess.run([os.path.join(ROOT, "scripts", "install-postgresql")], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.port = free_ports(1)[0]
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.workdir = tempfile.mkdtemp(prefix="consul-leader-pg-")
        self.datadir = os.path.join(self.workdir, "data")
        self.log = os.path.join(self.workdir, "postgres.log")
        self._owner: Optional[pwd.struct_passwd] = None
        if os.geteuid() == 0:
            self._owner = pwd.getpwnam("postgres")
            os.chown(self.workdir, self._owner.pw_uid, self._owner.pw_gid)
            os.chmod(self.workdir, 0o755)

    def _as_owner(self, argv: List[str]) -> List[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._owner is not None else argv

    def start(self) -> "PostgresCluster":
        subprocess.run(self._as_owner([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", self.user,
                                       "-A", "trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)
        options = (f"-p {self.port} -c listen_addresses={self.host} -k {self.workdir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(self._as_owner([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.log,
                                       "-o", options, "-w", "-t", "60", "start"]), check=True, capture_output=True)
        return self

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        subprocess.run(self._as_owner([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "immediate",
                                       "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
