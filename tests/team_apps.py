"""Two `python app.py --db URL` processes on one PostgreSQL, with signed-in users (the team tests and
scripts/load_team.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USERS = {"olga": "owner", "rev": "reviewer", **{f"ann{i}": "annotator" for i in range(1, 11)}}
PASSWORD = "pw-for-tests"


def make_project(db_url: str, output: Path, name: str, folder: Path, overlap: float = 0.0):
    from core.annotate.store import ProjectStore

    store = ProjectStore(output, name, db_url=db_url, user="olga")
    store.add_folder(folder)
    for user, role in USERS.items():
        if user != "olga":
            store.add_member(user, role)
    if overlap:
        store.set_overlap(overlap)
    return store


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """One app process: started at once, `wait()` until it answers, `stop()`."""

    def __init__(self, db_url: str, data: Path, output: Path, lease_s: float = 300, log: Path | None = None):
        self.db_url, self.output = db_url, output
        auth = output / "users.txt"
        output.mkdir(parents=True, exist_ok=True)
        auth.write_text("".join(f"{u}:{PASSWORD}\n" for u in USERS))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "PANET_LEASE_S": str(lease_s), "GRADIO_ANALYTICS_ENABLED": "False",
               "OMP_NUM_THREADS": "1"}
        self.log = open(log or output / f"app_{self.port}.log", "w")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen([sys.executable, "app.py", "--db", db_url, "--auth-file", str(auth),
                                      "--data", str(data), "--output", str(output), "--port", str(self.port)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 240) -> "App":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited ({self.proc.returncode}): see {self.log.name}")
            try:
                urllib.request.urlopen(self.url + "config", timeout=2)
                return self
            except urllib.error.HTTPError:      # it answers (sign-in first)
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app.py did not answer in {timeout} s")

    def client(self, user: str):
        from gradio_client import Client

        return Client(self.url, auth=(user, PASSWORD), verbose=False)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
