"""The ledger: every change to the contact table as an event, written in the
same transaction as the change, and read back by customer or as one feed
(README: "The ledger")."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Row, bindparam, func, select, text, union_all

from locks import driver
from models import Contact, Event
from reconcile import Event as NewEvent

# PostgreSQL: every transaction that appends events holds this advisory lock
# SHARED from before its events take their ids until it has committed or
# rolled back, so writers never wait for each other on it. A feed reader
# takes it EXCLUSIVELY for one statement, which therefore runs when no id is
# in flight: every id it can see was settled (feed()). Nothing else may draw
# an event id: a sequence alone does not follow commits (a transaction may
# take id 5 and commit after another one that took 6, and a reader that saw
# 6 would never look back for 5). The lock is LEDGER_LOCK paired with the
# event table's oid: services (or test runs) with event tables of their own
# in one database never wait for each other.
LEDGER_LOCK = 0x1ED6E4
_LEDGER_LOCK_KEYS = f"{LEDGER_LOCK}, 'event'::regclass::oid::int"

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
    "limit_name",
)
# PostgreSQL: the events go in as one array per column, unnested in their
# order; `at` and the request id, the same for every event, go once (one
# timestamp formatted per event cost 22 ms of a detach's 1,001 events, the
# whole statement now 2.5 ms).
_PG_ARRAYS = {
    "type": "varchar",
    "customer_id": "int",
    "contact_ids": "json",
    "absorbed_customer_id": "int",
    "previous_customer_id": "int",
    "email": "varchar",
    "phone_number": "varchar",
    "reason": "varchar",
    "limit_name": "varchar",
}
_PG_APPEND = (
    f"SELECT pg_advisory_xact_lock_shared({_LEDGER_LOCK_KEYS});"
    f" INSERT INTO event ({', '.join(_COLUMNS)})"
    " SELECT e.type, %s, %s, e.customer_id, e.contact_ids, e.absorbed_customer_id,"
    " e.previous_customer_id, e.email, e.phone_number, e.reason, e.limit_name"
    f" FROM unnest({', '.join(f'%s::{kind}[]' for kind in _PG_ARRAYS.values())})"
    f" WITH ORDINALITY AS e({', '.join(_PG_ARRAYS)}, position)"
    " ORDER BY e.position;"
    " COMMIT"
)
_SQLITE_INSERT = (
    f"INSERT INTO event ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(f':{name}' for name in _COLUMNS)})"
)
# The text SQLAlchemy's DateTime stores on SQLite (UTC, no zone).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def append_and_commit(
    connection: Connection,
    events: Sequence[NewEvent],
    *,
    at: datetime,
    request_id: str | None,
) -> None:
    """Append `events` to the ledger and commit the caller's transaction.

    On PostgreSQL the ledger lock (shared), the insert and COMMIT go to the
    server as one message: the lock is held only while the server runs it,
    never while it waits for this process, so a frozen or killed worker
    cannot hold it."""
    if connection.dialect.name == "sqlite":
        stamp = at.astimezone(UTC).strftime(SQLITE_DATETIME)
        rows = [_values(event, stamp, request_id) for event in events]
        driver(connection).executemany(_SQLITE_INSERT, rows)
        connection.commit()
        return
    cursor = psycopg.ClientCursor(
        cast(psycopg.Connection[Any], connection.connection.driver_connection)
    )
    rows = [_values(event, at, request_id) for event in events]
    arrays = [[row[name] for row in rows] for name in _PG_ARRAYS]
    connection.exec_driver_sql(cursor.mogrify(_PG_APPEND, [at, request_id, *arrays]))
    connection.commit()


def _values(event: NewEvent, at: Any, request_id: str | None) -> dict[str, Any]:
    """The event's row by column, with `at` as the driver takes it."""
    return {
        "type": event.type.value,
        "at": at,
        "request_id": request_id,
        "customer_id": event.customer_id,
        "contact_ids": json.dumps(event.contact_ids),
        "absorbed_customer_id": event.absorbed_customer_id,
        "previous_customer_id": event.previous_customer_id,
        "email": event.email,
        "phone_number": event.phone_number,
        "reason": event.reason,
        "limit_name": event.limit_name,
    }


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next: int | None


_EVENT_COLUMNS = tuple(Event.__table__.columns)


# PostgreSQL: the highest event id once no id is in flight (feed()). The
# lock is transaction-scoped and the statement its own transaction, so it is
# released as soon as the statement ends.
_PG_HORIZON = text(
    f"SELECT pg_advisory_xact_lock({_LEDGER_LOCK_KEYS}), max(id) FROM event"
)


def horizon(connection: Connection) -> int:
    """The highest event id below which no id is still in flight (0 for an
    empty ledger): every event committed from now on has a greater id. On
    PostgreSQL, read as feed() reads it; `connection` in autocommit mode."""
    if connection.dialect.name == "postgresql":
        return int(connection.execute(_PG_HORIZON).one()[1] or 0)
    return int(connection.execute(select(func.max(Event.id))).scalar() or 0)


def feed(
    connection: Connection,
    *,
    after: int,
    limit: int,
    types: Sequence[str] | None = None,
) -> Page:
    """Every event with an id above `after` (of one of `types`, when given;
    ix_event_type_id serves that read), oldest first, up to the newest
    event below which no id is still in flight: an event that shows up later
    always has a greater id than every event shown before. `connection`
    must be in autocommit mode, outside any transaction (models.py sets
    every connection up so): on PostgreSQL a transaction would keep every
    writer waiting for the ledger lock until it ended.

    On PostgreSQL the horizon comes first: the highest event id, read by a
    statement that takes the ledger lock exclusively, so it waits for the
    writers holding the lock to end (writers arriving meanwhile wait behind
    it). Its snapshot is taken before that wait, and every id up to the
    highest it sees was drawn before the lock was granted, under the shared
    lock, by a transaction that had therefore ended when it was. The page is
    read by a second statement, whose newer snapshot holds every one of
    those that committed, and stops at the horizon: ids drawn later may
    still be in flight (README: "Concurrency: why it is safe")."""
    bounds = [Event.id > after]
    if connection.dialect.name == "postgresql":
        horizon = connection.execute(_PG_HORIZON).one()[1]
        if horizon is None or horizon <= after:
            return Page([], None)
        bounds.append(Event.id <= horizon)
    if types is None:
        query = select(*_EVENT_COLUMNS).where(*bounds)
        return _page(
            connection.execute(query.order_by(Event.id).limit(limit + 1)).all(), limit
        )
    # A page of each type, read from ix_event_type_id in id order, then
    # merged: every type costs at most a page, however many events of the
    # types lie after `after` (one IN over the types read them all, to sort).
    pages = [
        select(*_EVENT_COLUMNS)
        .where(Event.type == kind, *bounds)
        .order_by(Event.id)
        .limit(limit + 1)
        .subquery()
        for kind in types
    ]
    merged = union_all(*(select(*page.c) for page in pages)).subquery()
    query = select(*merged.c).order_by(merged.c.id).limit(limit + 1)
    return _page(connection.execute(query).all(), limit)


# The customer's history, in one statement (README: "Decisions"):
# - members: its rows, live or soft-deleted; their ids are the customer ids
#   whose events it lists, and the values its live rows hold are the only
#   values it shows (any other is null);
# - handovers: the customer ids it took over from (primary_changed: all
#   their events up to the hand-over) or was split from (split: only those
#   of their events that name one of its rows);
# - of its own ids' events, those that name only rows living in another
#   customer (a part split off since) are left out.
# {elements} reads a JSON array of contact ids as rows (one function name per
# engine); every subquery reads the customer's rows or one event's ids, so
# the cost is the customer's size, whatever the size of the table.
_HISTORY_SQL = """
    WITH root AS (
        SELECT coalesce(linked_id, id) AS id FROM contact
        WHERE id = :contact_id AND deleted_at IS NULL
    ),
    members AS (
        SELECT contact.id, contact.email, contact.phone_number, contact.deleted_at
        FROM contact JOIN root ON contact.id = root.id
        UNION SELECT contact.id, contact.email, contact.phone_number,
        contact.deleted_at
        FROM contact JOIN root ON contact.linked_id = root.id
    ),
    handovers AS (
        SELECT type, previous_customer_id AS id, max(id) AS last FROM event
        WHERE type IN ('customer.primary_changed', 'customer.split')
        AND customer_id IN (SELECT id FROM members)
        GROUP BY type, previous_customer_id
    ),
    found AS (
        SELECT id, contact_ids, 1 AS whole FROM event
        WHERE customer_id IN (SELECT id FROM members) AND id > :after{types}
        UNION ALL SELECT event.id, event.contact_ids,
        CASE WHEN handovers.type = 'customer.primary_changed' THEN 1 ELSE 0 END
        FROM event JOIN handovers
        ON event.customer_id = handovers.id AND event.id <= handovers.last
        WHERE event.id > :after{types}
    ),
    listed AS (
        SELECT DISTINCT id FROM found
        WHERE EXISTS (
            SELECT 1 FROM {elements}(found.contact_ids) AS named
            WHERE (
                SELECT coalesce(linked_id, id) FROM contact
                WHERE id = CAST(named.value AS INTEGER)
            ) = (SELECT id FROM root)
        )
        OR (found.whole = 1 AND NOT EXISTS (
            SELECT 1 FROM {elements}(found.contact_ids) AS named
            WHERE (
                SELECT coalesce(linked_id, id) FROM contact
                WHERE id = CAST(named.value AS INTEGER) AND deleted_at IS NULL
            ) <> (SELECT id FROM root)
        ))
        ORDER BY id LIMIT :limit
    )
    SELECT event.id, type, at, request_id, customer_id, contact_ids,
    absorbed_customer_id, previous_customer_id,
    CASE WHEN email IN (
        SELECT email FROM members WHERE deleted_at IS NULL
    ) THEN email END AS email,
    CASE WHEN phone_number IN (
        SELECT phone_number FROM members WHERE deleted_at IS NULL
    ) THEN phone_number END AS phone_number,
    reason, limit_name
    FROM event JOIN listed ON event.id = listed.id
    ORDER BY event.id
"""
# One statement per engine and per whether `types=` filters the events.
_HISTORY = {
    (dialect, filtered): text(
        _HISTORY_SQL.format(
            elements=elements, types=" AND event.type IN :types" if filtered else ""
        )
    )
    .bindparams(*([bindparam("types", expanding=True)] if filtered else []))
    .columns(*_EVENT_COLUMNS)
    for dialect, elements in (
        ("sqlite", "json_each"),
        ("postgresql", "json_array_elements_text"),
    )
    for filtered in (False, True)
}
_LIVE_CONTACT = select(Contact.id).where(
    Contact.id == bindparam("contact_id"), Contact.deleted_at.is_(None)
)


def history(
    connection: Connection,
    contact_id: int,
    *,
    after: int,
    limit: int,
    types: Sequence[str] | None = None,
) -> Page | None:
    """The events of the customer that live contact `contact_id` belongs to,
    oldest first; None when no live contact has that id. They are the events
    of every contact id the customer has had: its primary's, those of the
    customers it absorbed (now its rows, live or soft-deleted), and that of
    the customer it came from up to the hand-over (a soft-deleted primary it
    took over from, `customer.primary_changed`: all of them; one it was split
    from, `customer.split`: those that name one of its rows; one step back).
    Of its own ids' events, those that name only rows of another customer
    (split off since) are left out. An email or phone that no live row of
    the customer holds is shown as null (README, "Decisions"). With `types`,
    only the events of those types."""
    parameters: dict[str, Any] = {
        "contact_id": contact_id,
        "after": after,
        "limit": limit + 1,
    }
    if types is not None:
        parameters["types"] = list(types)
    query = _HISTORY[connection.dialect.name, types is not None]
    page = _page(connection.execute(query, parameters).all(), limit)
    if page.events or connection.execute(_LIVE_CONTACT, parameters).first():
        return page
    return None


def _page(rows: Sequence[Row[Any]], limit: int) -> Page:
    more = len(rows) > limit
    events = [event_json(row) for row in rows[:limit]]
    return Page(events, events[-1]["id"] if more else None)


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
        ("limit", row.limit_name),
    ):
        if value is not None:
            answer[key] = value
    answer["email"] = row.email
    answer["phoneNumber"] = row.phone_number
    return answer
