"""A real PostgreSQL server for the tests, started from the machine's binaries.

The test session starts one on a free loopback port in a temporary folder (initdb
with `--no-sync`, `fsync=off`: about 2 s here; as the `postgres` user when the
tests run as root, since PostgreSQL refuses to run as root) and stops it, by pid,
at the end. `TREADLE_TEST_PG_URL=postgresql://...` uses a server you started
instead. Without PostgreSQL's binaries the PostgreSQL cases are skipped with the
reason, unless `TREADLE_REQUIRE_PG=1` (set by .ci/run) makes that a failure.

Each test gets a database of its own, copied from a template that already holds
the schema (`CREATE DATABASE .. TEMPLATE`, a few ms), and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = "treadle_template"
_numbers = itertools.count()


def _binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    admin_url: str  # postgresql://postgres@127.0.0.1:PORT/postgres
    folder: Path | None = None  # ours to stop and remove; None for a server given by URL
    pid: int | None = None
    restart_command: list[str] | None = None  # how it was started (to start it again after `halt`)

    def halt(self) -> None:
        """Stop the server (fast shutdown: clients are cut off), keeping its data."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGINT)
            while Path(f"/proc/{self.pid}").exists():
                time.sleep(0.02)
            self.pid = None

    def resume(self) -> None:
        """Start a halted server again, on the same port and data."""
        assert self.restart_command is not None and self.folder is not None
        subprocess.run(self.restart_command, capture_output=True, timeout=120, check=True)
        self.pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def url(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def start() -> PgServer | str:
    """A running server, or why there is none."""
    given = os.environ.get("TREADLE_TEST_PG_URL")
    if given:
        return PgServer(given)
    bin_dir = _binaries()
    if bin_dir is None:
        return "PostgreSQL is not installed (no initdb); .ci/run installs Debian's postgresql"
    folder = Path(tempfile.mkdtemp(prefix="treadle-pg-"))
    data, port = folder / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "the tests run as root and there is no `postgres` user to run PostgreSQL as"
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    done = run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    if done.returncode != 0:
        return f"initdb failed: {done.stderr.strip()[:500]}"
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=300")
    command = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
               "start"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return f"PostgreSQL did not start: {done.stderr.strip()[:300]} {(folder / 'log').read_text()[-500:]}"
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", folder, pid, command)


async def _admin(server: PgServer, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.admin_url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def prepare_template(server: PgServer) -> None:
    """A database holding the current schema, to copy for each test."""
    from runner.storage.store import Store

    async def go() -> None:
        await _admin(server, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)", f"CREATE DATABASE {TEMPLATE}")
        async with Store(server.url(TEMPLATE)):
            pass

    asyncio.run(go())


def new_database(server: PgServer) -> str:
    name = f"t_{os.getpid()}_{next(_numbers)}"
    # FILE_COPY: 4x faster than the default WAL_LOG for a small template (28 ms here)
    asyncio.run(_admin(server, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY"))
    return name


def drop_database(server: PgServer, name: str) -> None:
    asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
