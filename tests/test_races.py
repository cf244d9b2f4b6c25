"""Lost races, forced deterministically inside one test."""

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, func, insert, select, text

import locks
import reads
import writes
from engines import only_on
from invariants import assert_invariants, live_rows
from models import Contact, db
from reconcile import Member, Outcome


def test_a_request_whose_read_went_stale_is_answered_from_fresh_data(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another request commits the same brand-new contact between this
    request's first read and its write. The writer reads again once it holds
    its locks (SQLite's write lock; PostgreSQL's identifier locks), so it
    answers with the winner's contact, inserts nothing, and needs no retry.

    The competitor runs right after the first read returns (on SQLite that
    read goes straight to the driver, where no SQLAlchemy event sees it)."""
    with app.app_context():
        engine = db.engine
    competitor: dict[str, Any] = {}
    read = reads.read

    def commit_the_same_contact_after_the_first_read(
        connection: Connection, **values: str | None
    ) -> tuple[list[Member], set[str]]:
        rows = read(connection, **values)
        if not competitor:
            competitor["started"] = True
            with engine.connect() as other:
                competitor["identity"] = writes.identify(
                    other,
                    email="doc@fluxkart.com",
                    phone_number="123456",
                    request_id=None,
                ).identity
        return rows

    monkeypatch.setattr(reads, "read", commit_the_same_contact_after_the_first_read)
    with engine.connect() as connection:
        served = writes.identify(
            connection, email="doc@fluxkart.com", phone_number="123456", request_id=None
        )

    assert served.retries == 0
    assert competitor["identity"].outcome is Outcome.CREATED
    assert served.identity.outcome is Outcome.UNCHANGED
    assert served.identity.primary_id == competitor["identity"].primary_id
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Contact)) == 1


def seed(engine: Engine, *rows: tuple[str, str]) -> list[int]:
    """Insert primaries, each one second younger than the one before."""
    start = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as connection:
        return [
            connection.execute(
                insert(Contact)
                .values(
                    email=email,
                    phone_number=phone,
                    link_precedence="primary",
                    created_at=start + timedelta(seconds=n),
                    updated_at=start + timedelta(seconds=n),
                )
                .returning(Contact.id)
            ).scalar_one()
            for n, (email, phone) in enumerate(rows)
        ]


def waiting_for_a_lock(engine: Engine) -> bool:
    """A session that uses a table of this test's schema waits for a lock
    (sessions of tests running beside it, in other schemas, do not count)."""
    with engine.connect() as connection:
        return bool(connection.scalar(text(WAITING_IN_THIS_SCHEMA)))


WAITING_IN_THIS_SCHEMA = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN"
    " (SELECT held.pid FROM pg_locks held JOIN pg_class ON pg_class.oid ="
    " held.relation WHERE relnamespace = current_schema()::regnamespace)"
)


@only_on("postgresql")
def test_a_cluster_merged_while_its_lock_was_awaited_is_retried(app: Flask) -> None:
    """PostgreSQL: a request waits for the row lock of its cluster's primary
    while another transaction merges that cluster into an older one. When the
    lock is granted the primary is a secondary; the request locks the older
    primary too, in the same transaction, reads again and links its new row
    to it, with no retry (before, it rolled back and retried once, holding a
    lock that made every other writer wait)."""
    with app.app_context():
        engine = db.engine
        older, newer = seed(
            engine, ("d@fluxkart.com", "1111"), ("c@fluxkart.com", "2222")
        )
        result: dict[str, Any] = {}

        def request() -> None:
            with engine.connect() as connection:
                served = writes.identify(
                    connection,
                    email="c@fluxkart.com",
                    phone_number="3333",
                    request_id=None,
                )
                result["identity"], result["retries"] = served.identity, served.retries

        with engine.connect() as merger:
            merger.exec_driver_sql("BEGIN")
            merger.execute(
                select(Contact.id).where(Contact.id == newer).with_for_update()
            )
            thread = threading.Thread(target=request)
            thread.start()
            deadline = time.monotonic() + 10
            while not waiting_for_a_lock(engine):
                assert time.monotonic() < deadline, "the request never waited"
                time.sleep(0.01)
            merger.execute(
                text(
                    "UPDATE contact SET linked_id = :older,"
                    " link_precedence = 'secondary' WHERE id = :newer"
                ),
                {"older": older, "newer": newer},
            )
            merger.commit()
        thread.join(timeout=10)

        assert result["retries"] == 0
        assert result["identity"].primary_id == older
        assert result["identity"].outcome is Outcome.LINKED
        with engine.connect() as connection:
            assert_invariants(live_rows(connection))


def test_a_writer_kept_from_its_lock_gives_up_with_a_503(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds what a writer waits for (SQLite's write lock;
    on PostgreSQL the advisory lock of its email) for longer than
    BUSY_TIMEOUT. A
    lookup is still answered; a request that must write is refused with 503
    and Retry-After, and stores nothing."""
    with app.app_context():
        engine = db.engine
    assert client.post("/identify", json={"email": "a@shop.com"}).status_code == 200
    monkeypatch.setattr(locks, "BUSY_TIMEOUT", 0.2)

    with engine.connect() as holder:
        if engine.dialect.name == "sqlite":
            holder.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            key = locks.lock_key("email", "b@shop.com")
            holder.exec_driver_sql(f"BEGIN; SELECT pg_advisory_xact_lock({key})")
        lookup = client.post("/identify", json={"email": "a@shop.com"})
        write = client.post("/identify", json={"email": "b@shop.com"})
        holder.rollback()

    assert lookup.status_code == 200
    assert write.status_code == 503
    assert write.mimetype == "application/problem+json"
    assert write.headers["Retry-After"] == "1"
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Contact)) == 1
