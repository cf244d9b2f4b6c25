"""Counting the work of a statement rather than timing it, and the large
cluster that the cost tests read: shared by the tests that pin a cost."""

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, event, insert

import locks
from models import Contact

PHONE = "5550100"
T = TypeVar("T")


def seed_cluster(connection: Connection, size: int) -> None:
    """One customer of `size` rows, every one holding PHONE, each its own email."""
    start = datetime.now(UTC) - timedelta(days=1)
    primary = connection.execute(
        insert(Contact)
        .values(
            email="row0@shop.com",
            phone_number=PHONE,
            link_precedence="primary",
            created_at=start,
            updated_at=start,
        )
        .returning(Contact.id)
    ).scalar_one()
    connection.execute(
        insert(Contact),
        [
            {
                "email": f"row{n}@shop.com",
                "phone_number": PHONE,
                "linked_id": primary,
                "link_precedence": "secondary",
                "created_at": start + timedelta(seconds=n),
                "updated_at": start + timedelta(seconds=n),
            }
            for n in range(1, size)
        ],
    )


def instructions(connection: Connection, work: Callable[[], T]) -> tuple[int, T]:
    """SQLite's virtual machine instructions that `work` runs, and its result."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    driver = locks.driver(connection)
    driver.set_progress_handler(count, 1)
    try:
        done = work()
    finally:
        driver.set_progress_handler(None, 1)
    return counted[0], done


@contextmanager
def round_trips(engine: Engine) -> Iterator[list[str]]:
    """PostgreSQL: every message that the connections of `engine` send and
    wait for while this is open (what SQLAlchemy executes and what goes
    straight to the driver alike), by the first word of the first statement
    in it, in order. Read from libpq's trace of the protocol: a message ends
    when the server says it is ready for the next one (ReadyForQuery), so
    statements sent together (several in one text, or a pipeline) count
    once. A connection's trace is read when it goes back to the pool."""
    seen: list[str] = []
    traces: dict[int, Any] = {}
    # The statements each connection prepared, by name: a prepared one is
    # run by name, without its text.
    prepared: dict[int, dict[str, str]] = {}

    def trace(dbapi_connection: psycopg.Connection[Any], *_: object) -> None:
        file = tempfile.TemporaryFile("w+")
        traces[id(dbapi_connection)] = file
        dbapi_connection.pgconn.trace(file.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def read(dbapi_connection: psycopg.Connection[Any], *_: object) -> None:
        file = traces.pop(id(dbapi_connection), None)
        if file is None:
            return
        dbapi_connection.pgconn.untrace()
        file.seek(0)
        names = prepared.setdefault(id(dbapi_connection), {})
        seen.extend(_messages(file.read(), names))
        file.close()

    event.listen(engine, "checkout", trace)
    event.listen(engine, "checkin", read)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", trace)
        event.remove(engine, "checkin", read)


# A line of libpq's trace: who sent it (F: this process, B: the server), the
# kind of message and what it holds (a statement's text may go on over
# further lines, which match nothing).
_TRACED = re.compile(r"^([FB])\t\d+\t(\w+)(.*)$", re.MULTILINE)
_QUOTED = re.compile(r'"([^"]*)"?')


def _messages(trace: str, prepared: dict[str, str]) -> Iterator[str]:
    """The messages of a libpq trace, each by its first statement's first
    word: that of a simple Query's text, or of the first statement an
    extended one binds (`prepared`: the first word of each statement parsed
    so far, by name), up to the server's ReadyForQuery. A message that only
    prepares a statement (psycopg does so once per connection, on its fifth
    run) is left out: it is the connection's, not one request's."""
    first = None
    for sender, kind, rest in _TRACED.findall(trace):
        if sender == "F" and kind == "Parse":
            name, text = _QUOTED.findall(rest)[:2]
            prepared[name] = text.split(None, 1)[0]
        elif sender == "F" and kind == "Query" and first is None:
            first = _QUOTED.findall(rest)[0].split(None, 1)[0].rstrip(";").upper()
        elif sender == "F" and kind == "Bind" and first is None:
            first = prepared[_QUOTED.findall(rest)[1]].upper()
        elif sender == "B" and kind == "ReadyForQuery" and first is not None:
            yield first
            first = None
