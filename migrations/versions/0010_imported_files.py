"""How far the import of each file got.

`flask --app app contacts import` applies a file's lines in batches, one
transaction each; each transaction also records, under the file's SHA-256,
how many of its sorted lines are committed. A run that stops leaves whole
batches, and the same command run again starts after them: no row or event
is written twice, and a file imported whole changes nothing the second time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imported_file",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_imported_file")),
    )


def downgrade() -> None:
    op.drop_table("imported_file")
