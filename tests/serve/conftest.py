"""Serving fixtures: a real uvicorn server on a free localhost port, and a real PostgreSQL server.

The PostgreSQL server is started by the tests themselves (initdb + pg_ctl into a temp dir, as a non-root user
when run as root, on a free port) and skipped with the reason when that cannot be done.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from reasoner.config import ServeConfig

API_KEY = "test-key"
ADMIN_KEY = "admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir, db, **overrides):
    from reasoner.serve.app import create_app
    from reasoner.serve.server import run_in_thread
    from reasoner.serve.service import ServeService

    cfg = ServeConfig(db=str(db), api_key=API_KEY, admin_key=ADMIN_KEY, cpu_threads=1, **overrides)
    svc = ServeService.from_config(cfg, str(model_dir))
    return svc, run_in_thread(create_app(svc))


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """(service, handle) of one server for a test module, SQLite store in a temp dir."""
    svc, handle = start_server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "feedback.db")
    yield svc, handle
    handle.stop()
    svc.store.close()


@pytest.fixture()
def client(server):
    import httpx

    _, handle = server
    with httpx.Client(base_url=handle.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL server for the session; its SQLAlchemy URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL not installed (Debian package postgresql; tests/serve/install-deps.sh installs it)"
        )
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    # not under pytest's tmp dir: that is private to root, and the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="reasoner-pg-"))
    data, port = root / "data", free_port()
    user, run_as = "postgres", []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres system user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as a non-root user")
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
    init = subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"
    start = subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        log = (root / "log").read_text()[-300:] if (root / "log").exists() else start.stderr
        pytest.skip(f"PostgreSQL did not start: {log.strip()}")
    url = f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        import sqlalchemy as sa

        while True:
            try:
                sa.create_engine(url).connect().close()
                break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)
