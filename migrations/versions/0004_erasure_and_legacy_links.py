"""Suppressed values, and the links from before the ledger that no shared
value explains.

A detach regroups a customer's rows by the evidence that remains. For links
made before the ledger existed there is no merge event: the events migration
0002 wrote for those rows (no request id) are grouped by the customer they
were written for, and every row that no chain of shared values joins to that
customer's own row gets a legacy link to it, kept as evidence for good.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Iterator
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 10_000


def upgrade() -> None:
    op.create_table(
        "suppressed_value",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressed_value")),
        sa.UniqueConstraint("digest", name=op.f("uq_suppressed_value_digest")),
    )
    legacy = op.create_table(
        "legacy_link",
        sa.Column("contact_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("contact_id", name=op.f("pk_legacy_link")),
    )
    assert legacy is not None
    links: list[dict[str, int]] = []
    for link in _unexplained_links(op.get_bind()):
        links.append(link)
        if len(links) == _BATCH:
            op.bulk_insert(legacy, links)
            links = []
    if links:
        op.bulk_insert(legacy, links)


def _unexplained_links(connection: sa.Connection) -> Iterator[dict[str, int]]:
    event = sa.table(
        "event",
        sa.column("id", sa.Integer),
        sa.column("type", sa.String),
        sa.column("request_id", sa.String),
        sa.column("customer_id", sa.Integer),
        sa.column("contact_ids", sa.JSON),
        sa.column("email", sa.String),
        sa.column("phone_number", sa.String),
    )
    backfilled = (
        sa.select(
            event.c.customer_id,
            event.c.contact_ids,
            event.c.email,
            event.c.phone_number,
        )
        .where(
            event.c.request_id.is_(None),
            event.c.type.in_(["customer.created", "customer.contact_added"]),
        )
        .order_by(event.c.customer_id, event.c.id)
    )
    rows = connection.execute(backfilled.execution_options(stream_results=True))
    for customer_id, group in groupby(rows, key=lambda row: row.customer_id):
        yield from _links_of(customer_id, list(group))


def _links_of(customer_id: int, rows: list[Any]) -> Iterator[dict[str, int]]:
    """The rows of one customer that no chain of shared values joins to the
    customer's own row (all of them if that row was soft-deleted)."""
    parent: dict[object, object] = {}

    def root(node: object) -> object:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for row in rows:
        for kind, value in (("email", row.email), ("phone", row.phone_number)):
            if value is not None:
                parent[root(row.contact_ids[0])] = root((kind, value))
    anchor = root(customer_id)
    for row in rows:
        if root(row.contact_ids[0]) != anchor:
            yield {"contact_id": row.contact_ids[0], "customer_id": customer_id}


def downgrade() -> None:
    op.drop_table("legacy_link")
    op.drop_table("suppressed_value")
