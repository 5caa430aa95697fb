"""A throw-away PostgreSQL server for the tests: Debian's initdb and pg_ctl on a temporary folder and a free port.

PostgreSQL refuses to run as root, so under root (CI, containers) the server runs as the `postgres` user, on a
folder it owns. `.ci/run` installs Debian's postgresql package when it is missing.
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "grader"  # the database role initdb creates (trust authentication, on 127.0.0.1 only)


def binaries() -> Path | None:
    """Debian keeps initdb and pg_ctl off PATH, under /usr/lib/postgresql/VERSION/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_postgres(database: str = "gradebook"):
    """Start a server, create `database`, yield its SQLAlchemy URL (psycopg 3); stop the server and remove it."""
    import psycopg

    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does it)")
    folder = Path(tempfile.mkdtemp(prefix="grader-postgres-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    data, log = folder / "data", folder / "log"

    def run(*command):
        done = subprocess.run([*as_postgres, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{server_log}")

    run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", USER, "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "start")
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user={USER} dbname=postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{database}"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
