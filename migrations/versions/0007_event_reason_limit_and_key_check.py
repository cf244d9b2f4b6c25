"""A reason for corrections, the limit a refused link reached, and a check
value of the erasure key.

The `reason` of an event held only the guard's verdict on a refused link
("limit", "blocked"); a detach or an erasure now also stores the reason
support gave (a ticket reference, up to 200 characters). `limit_name` says
which limit a `customer.link_refused` event reached. `erasure_key_check`
holds one keyed hash of a fixed text made with ERASURE_KEY when the first
value is suppressed, never the key: the service refuses to start with
another key, or none, while suppressed values exist.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event") as batch:
        batch.alter_column(
            "reason",
            existing_type=sa.String(length=32),
            type_=sa.String(length=200),
            existing_nullable=True,
        )
        batch.add_column(sa.Column("limit_name", sa.String(length=32), nullable=True))
    op.create_table(
        "erasure_key_check",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_key_check")),
    )


def downgrade() -> None:
    op.drop_table("erasure_key_check")
    with op.batch_alter_table("event") as batch:
        batch.drop_column("limit_name")
        batch.alter_column(
            "reason",
            existing_type=sa.String(length=200),
            type_=sa.String(length=32),
            existing_nullable=True,
        )
