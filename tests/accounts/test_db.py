"""The database door: URLs, sessions, and migrations on both stores."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alembic.config
import alembic.script
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect, select, text
from sqlalchemy.exc import IntegrityError

from uplion.accounts import db, tables

ACCOUNTS_TABLES = {"users", "api_tokens"}


def head_revision() -> str | None:
    config = alembic.config.Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    return alembic.script.ScriptDirectory.from_config(config).get_current_head()


async def test_migrations_apply_to_an_empty_store_and_are_idempotent(database_url: str) -> None:
    await db.migrate(database_url)
    await db.migrate(database_url)
    database = db.Database(database_url)
    await database.start()
    try:
        async with database.session() as session:
            names = await session.run_sync(lambda s: inspect(s.connection()).get_table_names())
            versions = (await session.execute(text("SELECT version_num FROM alembic_version")))
            assert versions.scalars().all() == [head_revision()]
    finally:
        await database.close()
    assert set(names) >= ACCOUNTS_TABLES


async def test_the_migration_matches_the_tables(database: db.Database) -> None:
    metadata = MetaData()
    for name in ACCOUNTS_TABLES:
        db.Base.metadata.tables[name].to_metadata(metadata)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={
            "include_name": lambda name, kind, _parent: kind != "table" or name in ACCOUNTS_TABLES,
        })
        return list(compare_metadata(context, metadata))

    async with database.session() as session:
        assert await session.run_sync(lambda s: differences(s.connection())) == []


async def test_a_session_commits_at_the_end_and_rolls_back_on_an_error(
    database: db.Database,
) -> None:
    async def add_then_fail() -> None:
        async with database.session() as session:
            session.add(user("u_rolled_back"))
            await session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await add_then_fail()
    async with database.session() as session:
        session.add(user("u_kept"))
    async with database.session() as session:
        assert (await session.scalars(select(tables.User.id))).all() == ["u_kept"]


async def test_sqlite_enforces_foreign_keys_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'deeper' / 'uplion.db'}"
    await db.migrate(url)
    database = db.Database(url)
    await database.start()

    async def add_orphan_token() -> None:
        async with database.session() as session:
            session.add(tables.ApiToken(
                id="0123456789ab", user_id="u_nobody", name="t", secret_hash="0" * 64,
                prefix="upl-0123456789ab-", created_at=datetime.now(UTC),
            ))

    try:
        async with database.session() as session:
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            await add_orphan_token()
    finally:
        await database.close()


def test_the_default_store_is_sqlite_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("UPLION_DATA_DIR", str(tmp_path))
    assert db.default_url() == f"sqlite+aiosqlite:///{tmp_path}/uplion.db"
    monkeypatch.delenv("UPLION_DATA_DIR")
    assert db.default_url() == f"sqlite+aiosqlite:///{Path.home()}/.local/share/uplion/uplion.db"


async def test_other_stores_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL") as refused:
        await db.migrate("mysql+aiomysql://root:secret@localhost/uplion")
    assert "secret" not in str(refused.value)


async def test_a_session_needs_a_started_database() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        async with db.Database("sqlite+aiosqlite:///unused.db").session():
            pass


def user(user_id: str) -> tables.User:
    return tables.User(id=user_id, name=user_id, role="member", active=True,
                       created_at=datetime.now(UTC))
