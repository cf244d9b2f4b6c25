"""Each request costs a fixed, small number of SQL statements, whatever the
size of the table: a lookup is one query, in no transaction. A request that
writes then begins its transaction, takes its locks, reads again and writes
once, then appends its events to the ledger in one more statement (on
PostgreSQL one message: the ledger lock, the insert and COMMIT); on SQLite it
reads again only if another connection committed since its first read, which
none does here. Counted are the statements SQLAlchemy sends
through a cursor: not COMMIT, which the driver sends, nor what goes straight
to the driver on SQLite (BEGIN IMMEDIATE, PRAGMA data_version)."""

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from models import db


@pytest.fixture
def statements(app: Flask) -> Iterator[list[str]]:
    """The SQL of every statement the app runs while the test goes on."""
    with app.app_context():
        engine = db.engine
    seen: list[str] = []

    def capture(*args: object) -> None:
        seen.append(str(args[2]).split(None, 1)[0].rstrip(";").upper())

    event.listen(engine, "before_cursor_execute", capture)
    yield seen
    event.remove(engine, "before_cursor_execute", capture)


def writing(app: Flask, write: str) -> list[str]:
    """The statements of a request that writes `write`, then its events."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            # BEGIN with the identifier locks, primary-row locks, the fresh
            # read, the write, the ledger lock with the insert and COMMIT.
            return ["WITH", "BEGIN", "SELECT", "WITH", write, "SELECT"]
    return ["WITH", write, "INSERT"]


def post(client: FlaskClient, email: str, phone: str) -> None:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200


def test_each_kind_of_request_runs_a_fixed_number_of_statements(
    app: Flask, client: FlaskClient, statements: list[str]
) -> None:
    post(client, "doc@fluxkart.com", "111111")
    assert statements == writing(app, "INSERT")

    statements.clear()
    post(client, "emmett@hillvalley.edu", "111111")
    assert statements == writing(app, "INSERT")

    statements.clear()
    post(client, "emmett@hillvalley.edu", "111111")
    assert statements == ["WITH"]

    post(client, "george@hillvalley.edu", "222222")
    post(client, "biff@hillvalley.edu", "222222")
    statements.clear()
    post(client, "doc@fluxkart.com", "222222")
    assert statements == writing(app, "UPDATE")
