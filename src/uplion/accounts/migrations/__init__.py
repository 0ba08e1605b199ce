"""Alembic's environment and revisions of every platform table (applied by ``db.migrate``)."""
