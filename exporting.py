"""Every customer as one NDJSON line: its contact view, as /identify answers
it, and the createdAt of its primary (README: "Importing and exporting").

Customers are read in pages of PAGE primaries, ascending id, each page from
where the last one ended (keyset), all in one read-only transaction: the
export is one snapshot, whatever writes run beside it, and memory holds one
page whatever the size of the table."""

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, cast

import psycopg
from sqlalchemy import Connection

import locks
from reconcile import Identity, Member, views

PAGE = 2000
_SELECT = (
    "SELECT id, email, phone_number, linked_id, link_precedence, created_at"
    " FROM contact WHERE deleted_at IS NULL"
)
_SQL = {
    "sqlite": {
        "begin": "BEGIN",
        "primaries": "SELECT id FROM contact WHERE linked_id IS NULL AND id > ?"
        " ORDER BY id LIMIT ?",
        "rows": f"{_SELECT} AND (id IN (SELECT value FROM json_each(?))"
        " OR linked_id IN (SELECT value FROM json_each(?)))",
    },
    "postgresql": {
        # The export may wait on its reader (a pipe); the service's limit on
        # an idle transaction is for its own requests.
        "begin": "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"
        " SET LOCAL idle_in_transaction_session_timeout = 0",
        "primaries": "SELECT id FROM contact WHERE linked_id IS NULL AND id > %s"
        " ORDER BY id LIMIT %s",
        "rows": f"{_SELECT} AND (id = ANY(%s::int[]) OR linked_id = ANY(%s::int[]))",
    },
}


def export(
    connection: Connection,
    out: IO[str],
    *,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write every customer to `out`, ascending primary id; return how many.
    `progress` is told each page's number of customers. `connection` must
    be outside any transaction (models.py sets every connection up so)."""
    count = 0
    for page in _pages(connection):
        out.writelines(page)
        count += len(page)
        progress(len(page))
    return count


def customer_line(identity: Identity, created_at: str) -> str:
    """One customer's line; `created_at` as the API writes a time."""
    view: dict[str, Any] = {
        "primaryContactId": identity.primary_id,
        "emails": identity.emails,
        "phoneNumbers": identity.phone_numbers,
        "secondaryContactIds": identity.secondary_ids,
        "createdAt": created_at,
    }
    return json.dumps(view) + "\n"


def _pages(connection: Connection) -> Iterator[list[str]]:
    sql = _SQL[connection.dialect.name]
    sqlite = connection.dialect.name == "sqlite"
    connection.exec_driver_sql(sql["begin"])
    try:
        after = 0
        while True:
            primaries = [
                row[0] for row in _fetch(connection, sql["primaries"], (after, PAGE))
            ]
            if not primaries:
                break
            after = primaries[-1]
            # One text either way: psycopg would build the array in Python.
            ids = (
                json.dumps(primaries)
                if sqlite
                else "{" + ",".join(map(str, primaries)) + "}"
            )
            found = _fetch(connection, sql["rows"], (ids, ids))
            rows = [
                Member(i, email, phone, linked, link, _utc(at) if sqlite else at)
                for i, email, phone, linked, link, at in found
            ]
            # SQLite keeps the text SQLAlchemy's DateTime writes (UTC, six
            # digits after the second): rewritten, not parsed and formatted.
            times = {
                row[0]: row[5].replace(" ", "T") + "Z" if sqlite else _text(row[5])
                for row in found
            }
            # A customer whose primary was soft-deleted is shown with its
            # oldest live row as primary, as /identify would answer it.
            yield [
                customer_line(identity, times[identity.primary_id])
                for identity in views(rows)
            ]
    finally:
        connection.rollback()


def _fetch(
    connection: Connection, statement: str, parameters: tuple[Any, ...]
) -> list[Any]:
    """Every row of `statement`, straight from the driver, at a fraction of
    the cost of SQLAlchemy's rows; in the connection's transaction."""
    if connection.dialect.name == "sqlite":
        return locks.driver(connection).execute(statement, parameters).fetchall()
    driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
    return driver.execute(statement, parameters).fetchall()


def _text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value + "+00:00")
