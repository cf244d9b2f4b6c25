"""The invariants of the contract, checked on the live rows of a whole table,
and the ledger checked against them."""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, create_engine, select
from sqlalchemy.orm import Session

from models import Contact, Event


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
    row that holds both values (rule 4)."""
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


def assert_invariants(rows: list[Row], *, detached: bool = False) -> None:
    """One primary per cluster, the oldest row, every other row linked
    straight to it; no information inserted twice. With `detached` (the run
    detached values), rows holding one value may repeat: a detach keeps the
    other value of a row that held the detached one, which can leave it equal
    to another row of its customer; rows holding both values never do."""
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
    pairs = Counter(
        (row.email, row.phone_number)
        for row in rows
        if not detached or None not in (row.email, row.phone_number)
    )
    repeated = [pair for pair, count in pairs.items() if count > 1]
    assert not repeated, f"the same information was inserted twice: {repeated}"


@dataclass(frozen=True)
class LedgerEvent:
    id: int
    type: str
    customer_id: int
    contact_ids: list[int]
    absorbed_customer_id: int | None
    request_id: str | None = None


def ledger_events(bind: Session | Connection) -> list[LedgerEvent]:
    statement = select(
        Event.id,
        Event.type,
        Event.customer_id,
        Event.contact_ids,
        Event.absorbed_customer_id,
        Event.request_id,
    ).order_by(Event.id)
    return [LedgerEvent(*row) for row in bind.execute(statement)]


def replay(events: list[LedgerEvent]) -> dict[int, int]:
    """The customer of every contact, rebuilt from the ledger alone
    (replay_event, one event after another)."""
    customer_of: dict[int, int] = {}
    for event in events:
        replay_event(customer_of, event)
    return customer_of


def replay_event(customer_of: dict[int, int], event: LedgerEvent) -> None:
    """Apply one event to `customer_of`, the customer of every contact. A
    contact is created by exactly one event; merges, changes of primary and
    splits move it; detaches and erasures delete it. A merge's absorbed
    customer is a secondary of the survivor from then on (until a correction
    moves it)."""
    if event.type in {"customer.created", "customer.contact_added"}:
        (contact_id,) = event.contact_ids
        assert contact_id not in customer_of, f"{contact_id} created twice"
        customer_of[contact_id] = event.customer_id
    elif event.type in {
        "customer.merged",
        "customer.primary_changed",
        "customer.split",
    }:
        for contact_id in event.contact_ids:
            assert contact_id in customer_of, f"{event} moves an unknown row"
            customer_of[contact_id] = event.customer_id
    elif event.type in {"customer.detached", "customer.erased"}:
        for contact_id in event.contact_ids:
            customer_of.pop(contact_id, None)
    if event.type == "customer.merged":
        absorbed = customer_of[event.absorbed_customer_id or 0]
        assert absorbed == event.customer_id, event
        assert event.absorbed_customer_id != absorbed, event


def assert_ledger_explains(rows: list[Row], events: list[LedgerEvent]) -> None:
    """Replaying the ledger from empty gives exactly the table's customers."""
    customer_of = replay(events)
    assert set(customer_of) == {row.id for row in rows}
    assert customer_of == {row.id: row.linked_id or row.id for row in rows}


def table(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = live_rows(connection)
    engine.dispose()
    return rows


def ledger(url: str) -> list[LedgerEvent]:
    engine = create_engine(url)
    with engine.connect() as connection:
        events = ledger_events(connection)
    engine.dispose()
    return events


def assert_ledger_explains_the_table(url: str) -> None:
    """Every change has its event, none twice, and every merge event's
    absorbed customer is now a secondary of its survivor's customer."""
    assert_ledger_explains(table(url), ledger(url))
