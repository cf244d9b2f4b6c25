"""The ledger: every change to the contact table as an event, written in the
same transaction as the change, and read back by customer or as one feed
(README: "The ledger")."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from psycopg.types.json import Json
from sqlalchemy import Connection, Row, insert, or_, select

from models import Contact, Event
from reconcile import Event as NewEvent

# PostgreSQL: every transaction that appends events holds this advisory lock
# from the moment its events take their ids until it has committed, so ids
# are handed out in commit order (a sequence alone is not: a transaction may
# take id 5, then commit after another one that took id 6, and a reader that
# saw 6 would never look back for 5).
LEDGER_LOCK = 0x1ED6E4

_COLUMNS = (
    "type",
    "at",
    "request_id",
    "customer_id",
    "contact_ids",
    "absorbed_customer_id",
    "previous_customer_id",
    "email",
    "phone_number",
    "reason",
)
_PG_INSERT = f"INSERT INTO event ({', '.join(_COLUMNS)}) VALUES "
_PG_VALUES = f"({', '.join(['%s'] * len(_COLUMNS))})"
_INSERT = insert(Event)


def append_and_commit(
    connection: Connection,
    events: Sequence[NewEvent],
    *,
    at: datetime,
    request_id: str | None,
) -> None:
    """Append `events` to the ledger and commit the caller's transaction.

    On PostgreSQL the ledger lock, the insert and COMMIT go to the server as
    one message: the lock is held only while the server runs it, never while
    it waits for this process, so a frozen or killed worker cannot hold it."""
    rows = [_row(event, at, request_id) for event in events]
    if connection.dialect.name != "postgresql":
        connection.execute(_INSERT, rows)
        connection.commit()
        return
    cursor = psycopg.ClientCursor(
        cast(psycopg.Connection[Any], connection.connection.driver_connection)
    )
    values = ", ".join(
        cursor.mogrify(
            _PG_VALUES,
            [
                Json(row[name]) if name == "contact_ids" else row[name]
                for name in _COLUMNS
            ],
        )
        for row in rows
    )
    connection.exec_driver_sql(
        f"SELECT pg_advisory_xact_lock({LEDGER_LOCK}); {_PG_INSERT}{values}; COMMIT"
    )
    connection.commit()


def _row(event: NewEvent, at: datetime, request_id: str | None) -> dict[str, Any]:
    return {
        "type": event.type.value,
        "at": at,
        "request_id": request_id,
        "customer_id": event.customer_id,
        "contact_ids": list(event.contact_ids),
        "absorbed_customer_id": event.absorbed_customer_id,
        "previous_customer_id": event.previous_customer_id,
        "email": event.email,
        "phone_number": event.phone_number,
        "reason": None,
    }


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next: int | None


_EVENT_COLUMNS = tuple(Event.__table__.columns)


def feed(connection: Connection, *, after: int, limit: int) -> Page:
    """Every event with an id above `after`, oldest first."""
    query = select(*_EVENT_COLUMNS).where(Event.id > after)
    return _page(connection, query, limit)


def history(
    connection: Connection, contact_id: int, *, after: int, limit: int
) -> Page | None:
    """The events of the customer that live contact `contact_id` belongs to
    and of every customer merged into it, oldest first; None when no live
    contact has that id."""
    customers = _customer_ids(connection, contact_id)
    if customers is None:
        return None
    query = select(*_EVENT_COLUMNS).where(
        Event.customer_id.in_(customers), Event.id > after
    )
    return _page(connection, query, limit)


def _page(connection: Connection, query: Any, limit: int) -> Page:
    rows = connection.execute(query.order_by(Event.id).limit(limit + 1)).all()
    more = len(rows) > limit
    events = [event_json(row) for row in rows[:limit]]
    return Page(events, events[-1]["id"] if more else None)


def _customer_ids(connection: Connection, contact_id: int) -> set[int] | None:
    """Every id the customer of `contact_id` has had: its primary's, those of
    the customers it absorbed (now rows of it, live or soft-deleted), and
    those of primaries it took over from (`customer.primary_changed`)."""
    primary = connection.execute(
        select(Contact.linked_id, Contact.id).where(
            Contact.id == contact_id, Contact.deleted_at.is_(None)
        )
    ).first()
    if primary is None:
        return None
    ids: set[int] = set()
    frontier = {primary.linked_id or primary.id}
    while frontier:
        members = connection.execute(
            select(Contact.id).where(
                or_(Contact.id.in_(frontier), Contact.linked_id.in_(frontier))
            )
        ).scalars()
        ids |= frontier | set(members)
        previous = connection.execute(
            select(Event.previous_customer_id).where(
                Event.type == "customer.primary_changed",
                Event.customer_id.in_(ids),
            )
        ).scalars()
        frontier = {id_ for id_ in previous if id_ is not None} - ids
    return ids


def event_json(row: Row[Any]) -> dict[str, Any]:
    """An event as the API shows it; the extra member of its type only."""
    answer: dict[str, Any] = {
        "id": row.id,
        "type": row.type,
        "at": row.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "requestId": row.request_id,
        "customerId": row.customer_id,
        "contactIds": row.contact_ids,
    }
    for key, value in (
        ("absorbedCustomerId", row.absorbed_customer_id),
        ("previousCustomerId", row.previous_customer_id),
        ("reason", row.reason),
    ):
        if value is not None:
            answer[key] = value
    answer["email"] = row.email
    answer["phoneNumber"] = row.phone_number
    return answer
