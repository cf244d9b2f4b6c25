"""Contact ids are never given out twice, on SQLite too.

Detach and erase delete rows. SQLite gives a new row the largest id in its
table plus one, so deleting the newest row handed its id to the next new
contact: a shop holding the erased customer's id found another customer
under it, whose history began with the erased customer's events. The table
is rebuilt with AUTOINCREMENT, whose counter is set above every contact id
the ledger has seen created. PostgreSQL's sequence never reuses an id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEXED = ("email", "phone_number", "linked_id")
_COLUMNS = (
    "id, phone_number, email, linked_id, link_precedence,"
    " created_at, updated_at, deleted_at"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'contact'")
    op.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'contact', coalesce(max(id), 0)"
        " FROM (SELECT max(id) AS id FROM contact"
        " UNION ALL SELECT max(json_extract(contact_ids, '$[0]')) FROM event"
        " WHERE type IN ('customer.created', 'customer.contact_added'))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    """Put a new contact table, with or without AUTOINCREMENT, in the place of
    the old one. The old table is renamed first and dropped last: its links
    point into itself, and a copy made before it was dropped would point into
    the table being dropped (the service turns foreign keys on)."""
    op.rename_table("contact", "contact_old")
    for column in _INDEXED:
        op.drop_index(f"ix_contact_{column}", table_name="contact_old")
    # Dropping the old table deletes its rows one by one, each checking for
    # rows linked to it: without an index on the links that is a scan per
    # row, hours for a million contacts.
    op.create_index("ix_contact_old_linked_id", "contact_old", ["linked_id"])
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
        sqlite_autoincrement=autoincrement,
    )
    for column in _INDEXED:
        op.create_index(op.f(f"ix_contact_{column}"), "contact", [column])
    op.execute(f"INSERT INTO contact ({_COLUMNS}) SELECT {_COLUMNS} FROM contact_old")
    op.drop_table("contact_old")
