"""The event ledger, with one event for each live contact that existed before it.

Rows become customer.created (primaries) and customer.contact_added
(secondaries) events, in id order, dated when the row was created, with the
row's values as evidence and no request id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("contact_ids", sa.JSON(), nullable=False),
        sa.Column("absorbed_customer_id", sa.Integer(), nullable=True),
        sa.Column("previous_customer_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone_number", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("event") as batch_op:
        for column in ("customer_id", "email", "phone_number"):
            batch_op.create_index(batch_op.f(f"ix_event_{column}"), [column])
    postgresql = op.get_bind().dialect.name == "postgresql"
    array = "json_build_array" if postgresql else "json_array"
    op.execute(
        "INSERT INTO event (type, at, customer_id, contact_ids, email, phone_number)"
        " SELECT CASE WHEN linked_id IS NULL THEN 'customer.created'"
        " ELSE 'customer.contact_added' END,"
        f" created_at, COALESCE(linked_id, id), {array}(id), email, phone_number"
        " FROM contact WHERE deleted_at IS NULL ORDER BY id"
    )
    if postgresql:
        # Statistics for the rows just written: without them the planner
        # reads a customer's history by walking every event in id order.
        op.execute("ANALYZE event")


def downgrade() -> None:
    op.drop_table("event")
