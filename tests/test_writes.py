"""The write pipeline (writes.py) applying a Batch of several new rows that
name each other by placeholder, as a batch of orders decided in memory is
applied: one transaction, real ids in the rows and in the events."""

from datetime import UTC, datetime, timedelta

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, select

import locks
import writes
from engines import only_on
from invariants import assert_invariants, live_rows
from locks import LostRace
from models import Contact, Event
from reconcile import (
    PRIMARY,
    SECONDARY,
    Batch,
    EventType,
    NewRow,
    placeholder,
)
from reconcile import Event as NewEvent


def begin(connection: Connection) -> bool:
    if connection.dialect.name == "sqlite":
        locks.begin_immediate(connection)
    else:
        connection.exec_driver_sql("BEGIN")
    return True


def test_a_batch_of_new_rows_naming_each_other_is_applied_with_real_ids(
    connection: Connection,
) -> None:
    """P and Q are new primaries, S a new secondary of P, and Q is merged
    into P, all in one batch: the rows get consecutive ids after every id
    given before, link to each other's real ids, and so do the events."""
    old = writes.identify(
        connection, email="old@shop.com", phone_number=None, request_id=None
    ).identity.primary_id
    now = datetime.now(UTC) + timedelta(seconds=1)
    p, s, q = placeholder(0), placeholder(1), placeholder(2)
    batch = Batch(
        new=(
            NewRow("p@shop.com", "5550001", None, now),
            NewRow("p@shop.com", "5550002", p, now + timedelta(microseconds=1)),
            NewRow("q@shop.com", "5550003", None, now + timedelta(microseconds=2)),
        ),
        relink=((q, p),),
        events=(
            NewEvent(EventType.CREATED, p, (p,), "p@shop.com", "5550001"),
            NewEvent(EventType.CONTACT_ADDED, p, (s,), "p@shop.com", "5550002"),
            NewEvent(EventType.CREATED, q, (q,), "q@shop.com", "5550003"),
            NewEvent(
                EventType.MERGED,
                p,
                (q,),
                "q@shop.com",
                "5550003",
                absorbed_customer_id=q,
            ),
        ),
    )

    plan = writes.Plan(
        lock_and_read=lambda: begin(connection),
        rule=lambda _, __: batch,
        changes=lambda batch: bool(batch.events),
        apply=lambda batch, now: writes.apply_batch(connection, batch, now=now),
        request_id="batch",
    )
    written, retries = writes.retrying(
        connection, lambda: writes.write(connection, plan)
    )

    applied = written.applied
    assert applied is not None and retries == 0
    ids = applied.ids
    assert [ids[p], ids[s], ids[q]] == [old + 1, old + 2, old + 3]
    rows = {
        row.id: (row.linked_id, row.link_precedence)
        for row in connection.execute(select(Contact)).all()
    }
    assert rows == {
        old: (None, PRIMARY),
        ids[p]: (None, PRIMARY),
        ids[s]: (ids[p], SECONDARY),
        ids[q]: (ids[p], SECONDARY),
    }
    assert_invariants(live_rows(connection))
    stored = connection.execute(
        select(
            Event.type, Event.customer_id, Event.contact_ids, Event.absorbed_customer_id
        )
        .where(Event.request_id == "batch")
        .order_by(Event.id)
    ).all()
    assert [tuple(event) for event in stored] == [
        ("customer.created", ids[p], [ids[p]], None),
        ("customer.contact_added", ids[p], [ids[s]], None),
        ("customer.created", ids[q], [ids[q]], None),
        ("customer.merged", ids[p], [ids[q]], ids[q]),
    ]
    after = writes.identify(
        connection, email="after@shop.com", phone_number=None, request_id=None
    ).identity.primary_id
    assert after == ids[q] + 1


@only_on("postgresql")
def test_a_write_that_timed_out_in_its_lock_message_leaves_the_connection_usable(
    connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock step is one message sent straight to the driver: a lock wait
    that ends inside it (lock_timeout) still becomes LostRace, and the
    connection is left outside any transaction, ready for the next write."""
    writes.identify(connection, email="a@shop.com", phone_number=None, request_id=None)
    monkeypatch.setattr(locks, "BUSY_TIMEOUT", 0.2)
    with connection.engine.connect() as holder:
        key = locks.lock_key("email", "b@shop.com")
        holder.exec_driver_sql(f"BEGIN; SELECT pg_advisory_xact_lock({key})")
        with pytest.raises(LostRace):
            writes.identify(
                connection, email="b@shop.com", phone_number=None, request_id=None
            )
        holder.rollback()

    driver = connection.connection.driver_connection
    assert driver.info.transaction_status == TransactionStatus.IDLE
    served = writes.identify(
        connection, email="b@shop.com", phone_number=None, request_id=None
    )
    assert [event.type for event in served.events] == [EventType.CREATED]
    assert len(connection.execute(select(Contact.id)).all()) == 2


@only_on("postgresql")
def test_a_write_stopped_mid_statement_raises_the_interrupt_and_lets_go_of_its_locks(
    connection: Connection,
) -> None:
    """Ctrl-C (an import's SIGINT) that lands between sending a statement
    and reading its answer: the driver refuses the rollback that would follow
    ("another command is already in progress"), so the connection is closed
    instead; the interrupt itself comes out, not a driver error, and the
    server lets go of the transaction's locks."""
    key = locks.lock_key("email", "a@shop.com")
    driver = connection.connection.driver_connection

    def work() -> None:
        connection.exec_driver_sql(f"BEGIN; SELECT pg_advisory_xact_lock({key})")
        driver.pgconn.send_query(b"SELECT pg_sleep(1)")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        writes.retrying(connection, work)

    with connection.engine.connect() as other:
        other.exec_driver_sql("BEGIN; SET LOCAL lock_timeout = 5000")
        other.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")
        other.rollback()
