"""A real, throwaway PostgreSQL for the tests (Debian's server, run as the `postgres` user on a free port;
see ../shared/notes/postgresql.md). No mock database anywhere: the store's tests run on both engines."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: str) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        return subprocess.run(["su", "postgres", "-c", cmd], capture_output=True, text=True, timeout=120)
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)


class Cluster:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; `stop()` removes everything."""

    def __init__(self):
        if not (BIN / "initdb").exists():
            raise RuntimeError("PostgreSQL 15 is not installed (apt-get install -y postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="panet_pg_"))
        self.root.chmod(0o755)
        data = self.root / "pg"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
        self.port = _free_port()
        self.data = data / "data"
        for cmd in (f"{BIN}/initdb -D {self.data} -A trust -U postgres",
                    f"{BIN}/pg_ctl -D {self.data} -o '-p {self.port} -k {data} -c listen_addresses=127.0.0.1 "
                    f"-c max_connections=200 -c fsync=off' -l {data}/log -w start"):
            r = _as_postgres(cmd)
            if r.returncode != 0:
                raise RuntimeError(f"{cmd.split()[0]} failed: {r.stderr or r.stdout}")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """An empty database of its own (one per test): its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        _as_postgres(f"{BIN}/pg_ctl -D {self.data} -m immediate stop")
        shutil.rmtree(self.root, ignore_errors=True)
