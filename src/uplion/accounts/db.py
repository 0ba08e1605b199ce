"""The one door to the database: engines, sessions, the shared table base and the migrations.

Two stores, picked by URL:

- ``sqlite+aiosqlite:///<path>``: embedded, the default on one machine
  (``<UPLION_DATA_DIR or ~/.local/share/uplion>/uplion.db``). Every connection turns on WAL
  (readers do not wait for the writer) and foreign keys (off by default in SQLite).
- ``postgresql+asyncpg://user:password@host:port/database``: the production store.

Every table of the platform (accounts here, billing in ``uplion.billing.tables``) derives from
``Base``, and its schema changes are Alembic revisions in ``migrations/versions``, applied by
``migrate(url)`` (``alembic upgrade head`` run in-process, on an async engine; there is no
``alembic.ini``). Nothing else in the platform creates an engine.

``Database.start`` does not connect: a gateway must be able to start while the database is down
and serve the tokens its cache holds. Pooled connections are pinged before use, so a database that
restarted is reconnected to on the next query.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import alembic.command
import alembic.config
from sqlalchemy import Connection, MetaData, event, make_url, pool, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from uplion import config

MIGRATIONS = Path(__file__).parent / "migrations"

# Constraint names that are the same on every store, so migrations can name what they alter.
_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# pg_advisory_xact_lock key held while migrating: instances starting together migrate one by one.
_MIGRATION_LOCK = 0x75706C696F6E  # "uplion"
_PG_CONNECT_TIMEOUT_S = 5


class Base(DeclarativeBase):
    """The declarative base every platform table shares (one metadata, one migration history)."""

    metadata = MetaData(naming_convention=_NAMING)


def default_url() -> str:
    """The embedded store of one machine, in ``UPLION_DATA_DIR`` (``~/.local/share/uplion``)."""
    return f"sqlite+aiosqlite:///{config.data_dir().absolute() / 'uplion.db'}"


class Database:
    """Engine and sessions of one store; ``await start()`` before use, ``await close()`` after."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    async def start(self) -> None:
        self._engine = _create_engine(self.url)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    async def close(self) -> None:
        engine, self._engine, self._sessions = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed when the block ends, rolled back on an error."""
        if self._sessions is None:
            raise RuntimeError("the database is not started: call `await Database.start()` first")
        async with self._sessions.begin() as session:
            yield session


async def migrate(url: str | None = None) -> None:
    """Bring the store's schema to the latest revision (idempotent; safe on concurrent starts)."""
    engine = _create_engine(url or default_url(), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection) -> None:
    """``alembic upgrade head`` on this connection (``migrations/env.py`` picks it up)."""
    config = alembic.config.Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    alembic.command.upgrade(config, "head")


def _create_engine(url: str, **options: Any) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(
            parsed, pool_pre_ping=True, connect_args={"timeout": _PG_CONNECT_TIMEOUT_S}, **options
        )
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string()!r}: "
        "use sqlite+aiosqlite:///path or postgresql+asyncpg://host/database"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: no corruption, less fsync
    finally:
        cursor.close()
