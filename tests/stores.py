"""The stores the tests run against: embedded SQLite and a real PostgreSQL server (fixtures).

PostgreSQL is Debian's package (``make test`` installs it): a throwaway cluster is initialised in
a temp dir, listens on a free loopback port (its unix socket in that dir too) and is started once
per session. As root (CI), the server runs as the ``postgres`` OS user, which owns the temp dir.
Each test gets a database of its own. ``stoppable_postgres`` lets a test stop the server and makes
sure it runs again afterwards.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.ports import free_port
from uplion.accounts import db

_PG_PREFIX = Path("/usr/lib/postgresql")
_OS_USER = "postgres"


def _postgres_bindir() -> Path:
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent  # past symlinks, to where createdb is too
    found = sorted(
        _PG_PREFIX.glob("*/bin/initdb"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)],
    )
    if not found:
        pytest.fail("PostgreSQL is not installed (no initdb): run `make test`, which installs it")
    return found[-1].parent


class PostgresServer:
    """One throwaway PostgreSQL cluster; ``stop()`` and ``start()`` it at will."""

    def __init__(self, bindir: Path, workdir: Path, port: int) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.port = port
        self.running = False
        self._data = workdir / "data"
        self._log = workdir / "postgres.log"
        self._names = itertools.count()
        # The server refuses to run as root: run it as the postgres user, who owns the workdir.
        self._as_server = ["runuser", "-u", _OS_USER, "--"] if os.geteuid() == 0 else []

    def init(self) -> None:
        self._run(*self._as_server, self.bindir / "initdb", "-D", self._data, "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(*self._as_server, self.bindir / "pg_ctl", "-D", self._data, "-l", self._log,
                  "-o", options, "-w", "start")
        self.running = True

    def stop(self) -> None:
        self._run(*self._as_server, self.bindir / "pg_ctl", "-D", self._data, "-m", "fast",
                  "-w", "stop")
        self.running = False

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"uplion_{next(self._names)}"
        self._run(self.bindir / "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", name)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *command: str | Path) -> None:
        done = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            log = self._log.read_text() if self._log.exists() else "(no server log)"
            pytest.fail(f"{' '.join(map(str, command))} failed:\n{done.stderr}\n{log[-4000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="uplion-pg-"))  # not under pytest's 0700 root tmp
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(_OS_USER)
        except KeyError:
            pytest.fail(f"no {_OS_USER!r} OS user: run `make test`, which installs PostgreSQL")
        os.chown(workdir, account.pw_uid, account.pw_gid)
    server = PostgresServer(bindir, workdir, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture
def stoppable_postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, for a test that stops it: started again when the test ends."""
    yield postgres_server
    if not postgres_server.running:
        postgres_server.start()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'uplion.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest_asyncio.fixture(loop_scope="function")
async def database(database_url: str) -> AsyncIterator[db.Database]:
    """A migrated, started store of each kind."""
    await db.migrate(database_url)
    database = db.Database(database_url)
    await database.start()
    yield database
    await database.close()
