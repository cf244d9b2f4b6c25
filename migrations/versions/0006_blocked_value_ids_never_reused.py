"""Blocked value ids are never given out twice, on SQLite too.

SQLite gives a new row the largest id in its table plus one, so deleting the
newest blocked value handed its id to the next one: a DELETE retried after a
timeout, or sent by a support tool holding an old list, removed a value the
shop had just added. The table is rebuilt with AUTOINCREMENT (batch mode
copies the rows), its counter starting above the largest id it holds.
PostgreSQL's sequence never reuses an id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "blocked_value",
        recreate="always",
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass
