"""Each request costs a fixed, small number of SQL statements, whatever the
size of the table: a lookup is one query, in no transaction. A request that
writes then begins its transaction, takes its locks, reads again and writes
once, then appends its events to the ledger in one more statement. On
PostgreSQL, what counts is the messages a request sends and waits for (its
round trips): the lock step with the fresh reads is one, and the ledger
lock, the insert and COMMIT another; the first on a connection also
prepares the lock step's reads. On SQLite it reads again only if
another connection committed since its first read, which none does here (it
asks with PRAGMA data_version, before its read and after BEGIN IMMEDIATE)."""

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from costs import round_trips
from models import db

pytestmark = pytest.mark.quick


@pytest.fixture
def statements(app: Flask) -> Iterator[list[str]]:
    """The first word of every statement the app runs while the test goes on:
    on SQLite every statement the driver runs; on PostgreSQL every message
    sent to the server and waited for, by its first statement (a message of
    several statements counts once; the driver's COMMIT after the ledger's
    message sends nothing)."""
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        with round_trips(engine) as seen:
            yield seen
        return
    traced: list[str] = []

    def keep(sql: str) -> None:
        traced.append(sql.split(None, 1)[0].rstrip(";").upper())

    def trace(dbapi_connection: Any, *_: object) -> None:
        dbapi_connection.set_trace_callback(keep)

    event.listen(engine, "checkout", trace)
    yield traced
    event.remove(engine, "checkout", trace)


def writing(app: Flask, write: str, *, first: bool = False) -> list[str]:
    """The statements of a request with both values that writes `write`,
    then its events. Both values: it reads the partners they were merged with
    (MAX_PARTNERS_PER_VALUE). On PostgreSQL the `first` write of its kind on
    a connection finds the statements it runs by name not prepared yet."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            # The read (with the blocked-value flags); BEGIN with the
            # identifier locks, the primary-row locks, the fresh read and the
            # partners; the write; the ledger lock with the insert and COMMIT.
            # The first time, it asks which statements it runs by name the
            # connection has prepared, and prepares them before it.
            preparing = ["SELECT", "PREPARE"] if first else []
            return ["WITH", *preparing, "BEGIN", write, "SELECT"]
    # data_version, the blocked-value check, the read, BEGIN IMMEDIATE,
    # data_version again (nobody committed since: no second read), the
    # partners, the write, the ledger insert, COMMIT.
    return [
        "PRAGMA",
        "SELECT",
        "WITH",
        "BEGIN",
        "PRAGMA",
        "SELECT",
        write,
        "INSERT",
        "COMMIT",
    ]


def reading(app: Flask) -> list[str]:
    """The statements of a request that changes nothing: one read (on SQLite
    two: the blocked-value check is its own statement, cheaper than joined)."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            return ["WITH"]
    return ["PRAGMA", "SELECT", "WITH"]


def post(client: FlaskClient, email: str, phone: str) -> None:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200


def test_each_kind_of_request_runs_a_fixed_number_of_statements(
    app: Flask, client: FlaskClient, statements: list[str]
) -> None:
    post(client, "doc@fluxkart.com", "5551111")
    assert statements == writing(app, "INSERT", first=True)

    statements.clear()
    post(client, "emmett@hillvalley.edu", "5551111")
    assert statements == writing(app, "INSERT")

    statements.clear()
    post(client, "emmett@hillvalley.edu", "5551111")
    assert statements == reading(app)

    post(client, "george@hillvalley.edu", "5552222")
    post(client, "biff@hillvalley.edu", "5552222")
    statements.clear()
    post(client, "doc@fluxkart.com", "5552222")
    assert statements == writing(app, "UPDATE")
