"""The shop's own blocked values, and indexes on the values of merge events.

Blocked values are emails and phone numbers never matched or stored. The
partners of a value (MAX_PARTNERS_PER_VALUE) are read from the merge events
on every write: partial indexes keep that read as short as the merges are few.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blocked_value",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone_number", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(email IS NULL) <> (phone_number IS NULL)",
            name=op.f("ck_blocked_value_one_value"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocked_value")),
        sa.UniqueConstraint("email", name=op.f("uq_blocked_value_email")),
        sa.UniqueConstraint("phone_number", name=op.f("uq_blocked_value_phone_number")),
    )


    for column in ("email", "phone_number"):
        op.create_index(
            f"ix_event_merged_{column}",
            "event",
            [column],
            sqlite_where=sa.text("type = 'customer.merged'"),
            postgresql_where=sa.text("type = 'customer.merged'"),
        )


def downgrade() -> None:
    for column in ("email", "phone_number"):
        op.drop_index(f"ix_event_merged_{column}", table_name="event")
    op.drop_table("blocked_value")
