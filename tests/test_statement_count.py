"""Each request costs a fixed, small number of SQL statements, whatever the
size of the table: a lookup is one query, in no transaction. A request that
writes then begins its transaction, takes its locks, reads again and writes
once, then appends its events to the ledger in one more statement (on
PostgreSQL one message: the ledger lock, the insert and COMMIT); on SQLite it
reads again only if another connection committed since its first read, which
none does here (it asks with PRAGMA data_version, before its read and after
BEGIN IMMEDIATE)."""

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from models import db

pytestmark = pytest.mark.quick


@pytest.fixture
def statements(app: Flask) -> Iterator[list[str]]:
    """The first word of every statement the app runs while the test goes on:
    on SQLite every statement the driver runs (what SQLAlchemy sends and what
    goes straight to the driver), on PostgreSQL every message SQLAlchemy sends
    (the driver's COMMIT is not one)."""
    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def keep(sql: str) -> None:
        seen.append(sql.split(None, 1)[0].rstrip(";").upper())

    def capture(*args: object) -> None:
        keep(str(args[2]))

    def trace(dbapi_connection: Any, *_: object) -> None:
        dbapi_connection.set_trace_callback(keep)

    if engine.dialect.name == "sqlite":
        event.listen(engine, "checkout", trace)
        yield seen
        event.remove(engine, "checkout", trace)
    else:
        event.listen(engine, "before_cursor_execute", capture)
        yield seen
        event.remove(engine, "before_cursor_execute", capture)


def writing(app: Flask, write: str) -> list[str]:
    """The statements of a request with both values that writes `write`,
    then its events. Both values: it reads the partners they were merged with
    (MAX_PARTNERS_PER_VALUE)."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            # The read (with the blocked-value flags), BEGIN with the
            # identifier locks, primary-row locks, the fresh read, the
            # partners, the write, the ledger lock with the insert and COMMIT.
            return ["WITH", "BEGIN", "SELECT", "WITH", "SELECT", write, "SELECT"]
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
    assert statements == writing(app, "INSERT")

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
