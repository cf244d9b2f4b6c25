"""The ledger: every change to the contact table as an event, appended in
the same transaction as the change (writes.py commits it: on PostgreSQL with
the message built here). It is read back by customer or as one feed in
reads.py (docs/api.md: "The ledger")."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from sqlalchemy import Connection

from locks import driver
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
LEDGER_LOCK_KEYS = f"{LEDGER_LOCK}, 'event'::regclass::oid::int"

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
    f"SELECT pg_advisory_xact_lock_shared({LEDGER_LOCK_KEYS});"
    f" INSERT INTO event ({', '.join(_COLUMNS)})"
    " SELECT e.type, %s, %s, e.customer_id, e.contact_ids, e.absorbed_customer_id,"
    " e.previous_customer_id, e.email, e.phone_number, e.reason, e.limit_name"
    f" FROM unnest({', '.join(f'%s::{kind}[]' for kind in _PG_ARRAYS.values())})"
    f" WITH ORDINALITY AS e({', '.join(_PG_ARRAYS)}, position)"
    " ORDER BY e.position;"
    " COMMIT"
)
# Where each array's column is in a row (_row).
_PG_ARRAY_POSITIONS = [_COLUMNS.index(name) for name in _PG_ARRAYS]
_SQLITE_INSERT = (
    f"INSERT INTO event ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
# The text SQLAlchemy's DateTime stores on SQLite (UTC, no zone).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def append(
    connection: Connection,
    events: Sequence[NewEvent],
    *,
    at: datetime,
    request_id: str | None,
) -> None:
    """SQLite: insert `events` in the caller's transaction, straight through
    the driver. (PostgreSQL appends with commit_message().)"""
    stamp = at.astimezone(UTC).strftime(SQLITE_DATETIME)
    driver(connection).executemany(
        _SQLITE_INSERT, [_row(event, stamp, request_id) for event in events]
    )


def commit_message(
    connection: Connection,
    events: Sequence[NewEvent],
    *,
    at: datetime,
    request_id: str | None,
) -> str:
    """PostgreSQL: one message that takes the ledger lock (shared), inserts
    `events` and commits the caller's transaction, for writes.py to send.
    The lock is held only while the server runs it, never while it waits for
    this process, so a frozen or killed worker cannot hold it."""
    cursor = psycopg.ClientCursor(
        cast(psycopg.Connection[Any], connection.connection.driver_connection)
    )
    rows = [_row(event, at, request_id) for event in events]
    arrays = [[row[position] for row in rows] for position in _PG_ARRAY_POSITIONS]
    return cursor.mogrify(_PG_APPEND, [at, request_id, *arrays])


def _row(event: NewEvent, at: Any, request_id: str | None) -> tuple[Any, ...]:
    """The event's row, in _COLUMNS' order, with `at` as the driver takes
    it: a tuple, as an import appends a million of them."""
    return (
        event.type.value,
        at,
        request_id,
        event.customer_id,
        _ids_json(event.contact_ids),
        event.absorbed_customer_id,
        event.previous_customer_id,
        event.email,
        event.phone_number,
        event.reason,
        event.limit_name,
    )


def _ids_json(ids: tuple[int, ...]) -> str:
    """The JSON array json.dumps writes for these ids, without its encoder
    (a tenth of the time)."""
    return f"[{', '.join(map(str, ids))}]"
