"""Billing: hourly usage totals and the ids of the usage events already applied.

Revision ID: 0002_billing
Revises: 0001_accounts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_billing"
down_revision: str | None = "0001_accounts"
branch_labels: str | None = None
depends_on: str | None = None

_COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms_total")


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _COUNTERS),
        sa.PrimaryKeyConstraint(
            "user_id", "token_id", "model", "version", "hour", name="pk_usage_hourly"
        ),
    )
    op.create_index("ix_usage_hourly_hour", "usage_hourly", ["hour"])
    op.create_table(
        "billing_applied_events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_billing_applied_events"),
    )
    op.create_index(
        "ix_billing_applied_events_applied_at", "billing_applied_events", ["applied_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_billing_applied_events_applied_at", table_name="billing_applied_events")
    op.drop_table("billing_applied_events")
    op.drop_index("ix_usage_hourly_hour", table_name="usage_hourly")
    op.drop_table("usage_hourly")
