"""The stores of the accounts tests (SQLite, a throwaway PostgreSQL), for the billing tests too."""

from __future__ import annotations

from tests.accounts.conftest import database, database_url, postgres_server, postgres_url

__all__ = ["database", "database_url", "postgres_server", "postgres_url"]
