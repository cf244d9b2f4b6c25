"""The ledger: the events each change appends, in the same transaction, with
their evidence; none for a request that changes nothing; events for the rows
of a database upgraded from before the ledger; on PostgreSQL, writers that
never wait for each other's commits and a feed that never shows an event
before a smaller id that is still in flight."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, create_engine, func, select, text, update

from conftest import ROOT, postgres_schema
from engines import only_on
from invariants import assert_ledger_explains, ledger_events, live_rows
from ledger import LEDGER_LOCK
from models import Contact, Event, db


def post(
    client: FlaskClient, email: str | None, phone: str | None, **headers: str
) -> Any:
    response = client.post(
        "/identify", json={"email": email, "phoneNumber": phone}, headers=headers
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["contact"]


def events(client: FlaskClient, after: int = 0) -> list[dict[str, Any]]:
    response = client.get(f"/events?after={after}&limit=100")
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.get_json()["events"]
    return found


REQUEST_ID = "3f0c9a4d-8e1b-4c2a-9f6e-5d4c3b2a1f0e"


def stable(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in {"at", "requestId"}}


def test_a_request_id_that_could_carry_personal_data_is_never_stored(
    client: FlaskClient,
) -> None:
    post(
        client,
        "lorraine@hillvalley.edu",
        "123456",
        **{"X-Request-ID": "cust_4479000111"},
    )

    (created,) = events(client)

    assert "4479000111" not in created["requestId"]
    assert len(created["requestId"]) == 32


def test_each_rule_appends_its_event_with_the_request_as_evidence(
    client: FlaskClient,
) -> None:
    post(client, "lorraine@hillvalley.edu", "123456", **{"X-Request-ID": REQUEST_ID})
    post(client, "mcfly@hillvalley.edu", "123456")
    post(client, None, "123456")
    post(client, "george@hillvalley.edu", "919191")
    post(client, "biffsucks@hillvalley.edu", "717171")
    post(client, "george@hillvalley.edu", "717171")

    found = events(client)

    assert [stable(event) for event in found] == [
        {"id": 1, "type": "customer.created", "customerId": 1, "contactIds": [1],
         "email": "lorraine@hillvalley.edu", "phoneNumber": "123456"},
        {"id": 2, "type": "customer.contact_added", "customerId": 1,
         "contactIds": [2], "email": "mcfly@hillvalley.edu", "phoneNumber": "123456"},
        {"id": 3, "type": "customer.created", "customerId": 3, "contactIds": [3],
         "email": "george@hillvalley.edu", "phoneNumber": "919191"},
        {"id": 4, "type": "customer.created", "customerId": 4, "contactIds": [4],
         "email": "biffsucks@hillvalley.edu", "phoneNumber": "717171"},
        {"id": 5, "type": "customer.merged", "customerId": 3, "contactIds": [4],
         "absorbedCustomerId": 4, "email": "george@hillvalley.edu",
         "phoneNumber": "717171"},
    ]  # fmt: skip
    assert found[0]["requestId"] == REQUEST_ID
    assert all(event["requestId"] for event in found)
    assert found[0]["at"].endswith("Z")
    at = [datetime.fromisoformat(event["at"]) for event in found]
    assert at == sorted(at)


def test_a_request_that_changes_nothing_appends_nothing(client: FlaskClient) -> None:
    post(client, "doc@fluxkart.com", "123456")
    before = events(client)

    post(client, "doc@fluxkart.com", "123456")
    post(client, "doc@fluxkart.com", None)
    post(client, None, "123 456")

    assert events(client) == before


def test_a_soft_deleted_primary_hands_over_with_a_primary_changed_event(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "a@shop.com", "1111")
    post(client, "b@shop.com", "1111")
    post(client, "c@shop.com", "1111")
    with app.app_context():
        db.session.execute(
            update(Contact).where(Contact.id == 1).values(deleted_at=datetime.now(UTC))
        )
        db.session.commit()

    post(client, None, "1111")

    last = events(client)[-1]
    assert stable(last) == {
        "id": 4, "type": "customer.primary_changed", "customerId": 2,
        "contactIds": [2, 3], "previousCustomerId": 1, "email": None,
        "phoneNumber": "1111",
    }  # fmt: skip


def test_events_and_rows_of_a_failed_write_are_both_absent(
    app: Flask, client: FlaskClient
) -> None:
    """A write whose transaction fails stores neither its rows nor its events:
    here a trigger added for the test refuses the event."""
    with app.app_context():
        engine = db.engine
    with engine.connect() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON event"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            if engine.dialect.name == "sqlite"
            else "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON event"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    app.config["PROPAGATE_EXCEPTIONS"] = False
    try:
        response = client.post("/identify", json={"email": "doc@fluxkart.com"})
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(
                "DROP TRIGGER refuse"
                + (
                    ""
                    if engine.dialect.name == "sqlite"
                    else " ON event; DROP FUNCTION refuse()"
                )
            )
    assert response.status_code == 500
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Contact)) == 0
        assert connection.scalar(select(func.count()).select_from(Event)) == 0


def upgrade_to(database_url: str, revision: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade", revision],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def bare_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue("postgres_url")
    with postgres_schema(f"ledger_upgrade_{os.getpid()}") as url:
        yield url


def test_an_upgraded_database_has_an_event_per_row_and_keeps_unexplained_links(
    bare_database_url: str,
) -> None:
    upgrade_to(bare_database_url, "0001")
    engine = create_engine(bare_database_url)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        # id, email, phone, linked_id, precedence, deleted
        (1, "a@shop.com", "1111", None, "primary", False),
        (2, "b@shop.com", "2222", None, "primary", False),
        (3, "a2@shop.com", "1111", 1, "secondary", False),
        (4, "b@shop.com", "3333", 2, "secondary", True),
        # merged long ago: no shared value explains this link
        (5, "c@shop.com", "4444", 1, "secondary", False),
    ]
    with engine.begin() as connection:
        for row_id, email, phone, linked, precedence, deleted in rows:
            at = start + timedelta(days=row_id)
            connection.execute(
                Contact.__table__.insert().values(
                    id=row_id, email=email, phone_number=phone, linked_id=linked,
                    link_precedence=precedence, created_at=at, updated_at=at,
                    deleted_at=at if deleted else None,
                )
            )  # fmt: skip

    upgrade_to(bare_database_url, "head")

    with engine.connect() as connection:
        found = connection.execute(
            select(Event.type, Event.customer_id, Event.contact_ids, Event.email,
                   Event.phone_number, Event.request_id, Event.at).order_by(Event.id)
        ).all()  # fmt: skip
        assert_ledger_explains(live_rows(connection), ledger_events(connection))
    assert [tuple(row[:6]) for row in found] == [
        ("customer.created", 1, [1], "a@shop.com", "1111", None),
        ("customer.created", 2, [2], "b@shop.com", "2222", None),
        ("customer.contact_added", 1, [3], "a2@shop.com", "1111", None),
        ("customer.contact_added", 1, [5], "c@shop.com", "4444", None),
    ]
    assert found[0].at == start + timedelta(days=1)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT * FROM legacy_link")).all() == [(5, 1)]

    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "customers", "detach", "3",
         "--phone-number", "1111"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": bare_database_url}, check=True,
        capture_output=True,
    )  # fmt: skip

    with engine.connect() as connection:
        linked = {row.id: row.linked_id for row in live_rows(connection)}
    engine.dispose()
    assert linked == {1: None, 2: None, 3: None, 5: 1}


# A lock of this test's own (keyed by its event table, so parallel runs on
# other schemas never meet it) that a trigger makes a held writer wait for.
HOLD = "1, 'event'::regclass::oid::int"


def waiting_for(engine: Engine, key: int) -> bool:
    """A connection waits to take the advisory lock (`key`, this schema's
    event table) exclusively."""
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = :key AND objid = 'event'::regclass::oid"
                    " AND objsubid = 2 AND mode = 'ExclusiveLock' AND NOT granted"
                ),
                {"key": key},
            )
        )


def wait_until(condition: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def in_background(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(value=work()))
    thread.start()
    return thread, result


@contextmanager
def a_writer_held_before_commit(
    app: Flask, client: FlaskClient
) -> Iterator[tuple[Engine, Connection]]:
    """PostgreSQL: a real request (customer 1) whose event has taken id 1 and
    which has not committed: a trigger added for the test makes its insert
    wait for the lock HOLD, held by the connection yielded. The caller
    commits that connection to let the request finish."""
    with app.app_context():
        engine = db.engine
    with engine.connect() as setup:
        setup.exec_driver_sql(
            "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_advisory_xact_lock({HOLD}); RETURN NEW; END $$;"
            " CREATE TRIGGER hold BEFORE INSERT ON event FOR EACH ROW"
            " WHEN (NEW.email = 'held@fluxkart.com') EXECUTE FUNCTION hold()"
        )
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0;"
                f" SELECT pg_advisory_xact_lock({HOLD})"
            )
            held, result = in_background(
                lambda: post(client, "held@fluxkart.com", "2222")
            )
            wait_until(
                lambda: waiting_for(engine, 1),
                "the held request never reached its event",
            )
            yield engine, holder
        held.join(timeout=10)
        assert result["value"]["primaryContactId"] == 1
    finally:
        with engine.connect() as setup:
            setup.exec_driver_sql("DROP TRIGGER hold ON event; DROP FUNCTION hold()")


def committed(engine: Engine) -> list[tuple[int, int]]:
    """(id, customer) of the events committed so far, read past the feed."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(Event.id, Event.customer_id).order_by(Event.id)
        )
        return [(row.id, row.customer_id) for row in rows]


@only_on("postgresql")
def test_a_writer_commits_while_another_writers_event_is_in_flight_on_postgresql(
    app: Flask, client: FlaskClient
) -> None:
    """Writers of different customers never wait for each other, at commit
    included: another request's event has its id and its COMMIT is held
    back, and a request for a new customer is answered and committed
    meanwhile."""
    with a_writer_held_before_commit(app, client) as (engine, holder):
        thread, result = in_background(lambda: post(client, "doc@fluxkart.com", "1111"))
        thread.join(timeout=2)
        answered = not thread.is_alive()
        seen_meanwhile = committed(engine)
        holder.commit()
    thread.join(timeout=10)

    assert answered, "the request waited for another writer's commit"
    assert result["value"]["primaryContactId"] == 2
    assert seen_meanwhile == [(2, 2)]


@only_on("postgresql")
def test_the_feed_never_shows_an_event_before_a_smaller_id_in_flight_on_postgresql(
    app: Flask, client: FlaskClient
) -> None:
    """Event 1 is in flight when event 2 commits. A reader of the feed is not
    shown 2 until 1 has settled: once it commits, paging from the start with
    `after` shows 1, then 2, and nothing below an event already shown."""
    with a_writer_held_before_commit(app, client) as (engine, holder):
        thread, _ = in_background(lambda: post(client, "doc@fluxkart.com", "1111"))
        wait_until(lambda: committed(engine) == [(2, 2)], "event 2 never committed")
        reader, page = in_background(lambda: client.get("/events?limit=1").get_json())
        wait_until(
            lambda: not reader.is_alive() or waiting_for(engine, LEDGER_LOCK),
            "the reader neither answered nor waited",
        )
        holder.commit()
    reader.join(timeout=10)
    thread.join(timeout=10)

    first = [event["id"] for event in page["value"]["events"]]
    rest = [event["id"] for event in events(client, after=first[-1] if first else 0)]
    assert first + rest == [1, 2]
