"""The invariants of SPEC.md, checked on the live rows of a whole table."""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from models import Contact


@dataclass(frozen=True)
class Row:
    id: int
    email: str | None
    phone_number: str | None
    linked_id: int | None
    link_precedence: str
    created_at: datetime


def live_rows(bind: Session | Connection) -> list[Row]:
    statement = (
        select(
            Contact.id,
            Contact.email,
            Contact.phone_number,
            Contact.linked_id,
            Contact.link_precedence,
            Contact.created_at,
        )
        .where(Contact.deleted_at.is_(None))
        .order_by(Contact.id)
    )
    return [Row(*row) for row in bind.execute(statement)]


def clusters(rows: list[Row]) -> list[list[Row]]:
    """Rows joined by a shared email or phone, or by a link, directly or through
    other rows. Links count: a merge joins two clusters without inserting the
    row that holds both values (spec, rule 4)."""
    parent = {row.id: row.id for row in rows}

    def root(row_id: int) -> int:
        while parent[row_id] != row_id:
            row_id = parent[row_id]
        return row_id

    holders: dict[tuple[str, str], int] = {}
    for row in rows:
        for kind, value in (("email", row.email), ("phone", row.phone_number)):
            if value is not None:
                holder = holders.setdefault((kind, value), row.id)
                parent[root(row.id)] = root(holder)
        if row.linked_id in parent:
            parent[root(row.id)] = root(row.linked_id)
    groups: dict[int, list[Row]] = {}
    for row in rows:
        groups.setdefault(root(row.id), []).append(row)
    return list(groups.values())


def assert_invariants(rows: list[Row]) -> None:
    for cluster in clusters(rows):
        primaries = [row for row in cluster if row.link_precedence == "primary"]
        assert len(primaries) == 1, f"not one primary in {cluster}"
        primary = primaries[0]
        assert primary.linked_id is None, primary
        oldest = min(cluster, key=lambda row: (row.created_at, row.id))
        assert primary == oldest, f"{primary} is not the oldest of {cluster}"
        for row in cluster:
            if row != primary:
                assert row.link_precedence == "secondary", row
                assert row.linked_id == primary.id, f"{row} not linked to {primary}"
    pairs = Counter((row.email, row.phone_number) for row in rows)
    repeated = [pair for pair, count in pairs.items() if count > 1]
    assert not repeated, f"the same information was inserted twice: {repeated}"
