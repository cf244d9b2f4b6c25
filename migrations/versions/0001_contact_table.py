"""The contact table (docs/api.md: "Identify's rules"), with its indexes on email, phone
and link.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_number", sa.String(length=16), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("linked_id", sa.Integer(), nullable=True),
        sa.Column("link_precedence", sa.String(length=9), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "link_precedence IN ('primary', 'secondary')",
            name=op.f("ck_contact_link_precedence"),
        ),
        sa.ForeignKeyConstraint(
            ["linked_id"], ["contact.id"], name=op.f("fk_contact_linked_id_contact")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact")),
    )
    with op.batch_alter_table("contact") as batch_op:
        for column in ("email", "phone_number", "linked_id"):
            batch_op.create_index(batch_op.f(f"ix_contact_{column}"), [column])


def downgrade() -> None:
    op.drop_table("contact")
