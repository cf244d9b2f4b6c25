"""One stuck transaction must not stall everyone: real gunicorn workers, a
real PostgreSQL and SQLite file, locks held from another connection, and
workers frozen with SIGSTOP."""

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import Connection, create_engine, text

import locks
from conftest import gunicorn, migrate
from live import free_port
from models import IDLE_IN_TRANSACTION_TIMEOUT, prepare_engine

# Tests here bound how long an answer or a wait takes: they run one after
# another on one xdist worker, beside test_abuse's, not beside each other.
pytestmark = pytest.mark.xdist_group("serial")

# The advisory lock every PostgreSQL writer took, shared (a retry exclusively),
# before writers stopped sharing any lock: the repro holds it.
FORMER_WRITERS_LOCK = 1913969


def gunicorn_workers(port: int) -> list[int]:
    """The worker processes of the gunicorn this test process started on `port`."""
    masters = [
        pid
        for pid in processes_with_parent(os.getpid())
        if f"PORT={port}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    ]
    return [pid for master in masters for pid in processes_with_parent(master)]


def processes_with_parent(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the command name, which is in parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def identify(base_url: str, body: dict[str, Any]) -> tuple[int, float]:
    """The status of POST /identify and how long it took, in seconds."""
    started = time.monotonic()
    status = requests.post(f"{base_url}/identify", json=body, timeout=60).status_code
    return status, time.monotonic() - started


def waiting_for_the_lock(connection: Connection, key: int) -> bool:
    """A session waits for the advisory lock `key` (its 64 bits are
    pg_locks' classid and objid); waits of tests running beside this one,
    for other locks, do not count."""
    return bool(
        connection.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND locktype = 'advisory' AND objsubid = 1"
                " AND (classid::bigint << 32 | objid::bigint) = :key"
            ),
            {"key": key},
        )
    )


def wait_until(condition: Any, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@contextmanager
def holding(url: str, *statements: str) -> Iterator[None]:
    """Each statement run in a transaction of its own connection, left open
    (holding its locks, or still waiting for them) until the block ends."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    connections = [psycopg.connect(conninfo, autocommit=True) for _ in statements]
    threads = [
        threading.Thread(target=run_until_cancelled, args=(connection, statement))
        for connection, statement in zip(connections, statements, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
            thread.join(timeout=0.5)
        yield
    finally:
        for connection in connections:
            connection.cancel_safe()
        for thread, connection in zip(threads, connections, strict=True):
            thread.join()
            connection.close()


def run_until_cancelled(connection: psycopg.Connection[Any], statement: str) -> None:
    connection.execute("BEGIN")
    with suppress(psycopg.errors.QueryCanceled):
        connection.execute(statement)


def test_a_new_customer_is_served_at_once_while_another_transaction_holds_locks(
    postgres_url: str,
) -> None:
    """PostgreSQL: another connection holds, in turn, each kind of lock a
    writer can meet: the lock every writer used to share (held shared, with
    an exclusive request queued behind it: the issue's repro, where a
    brand-new email took 9.5 s), the advisory locks of another customer's
    email and phone, and the row lock of another customer's primary. A
    brand-new, unrelated customer is served in under a second each time."""
    migrate(postgres_url)
    with gunicorn(postgres_url, free_port(), workers=2) as base_url:
        assert identify(base_url, {"email": "other@shop.com", "phoneNumber": "5551"})
        email_key = locks.lock_key("email", "other@shop.com")
        phone_key = locks.lock_key("phone", "5551")
        holds = {
            "the former writers lock, shared, and exclusive behind it": (
                f"SELECT pg_advisory_xact_lock_shared({FORMER_WRITERS_LOCK})",
                f"SELECT pg_advisory_xact_lock({FORMER_WRITERS_LOCK})",
            ),
            "another customer's identifier locks": (
                f"SELECT pg_advisory_xact_lock({email_key}),"
                f" pg_advisory_xact_lock({phone_key})",
            ),
            "another customer's primary row": (
                "SELECT id FROM contact WHERE email = 'other@shop.com' FOR UPDATE",
            ),
        }
        for n, (name, statements) in enumerate(holds.items()):
            with holding(postgres_url, *statements):
                body = {"email": f"new{n}@shop.com", "phoneNumber": f"77700{n}"}
                status, seconds = identify(base_url, body)
            assert status == 200, name
            assert seconds < 1.0, f"{name}: {seconds:.1f} s"


def test_the_server_ends_a_transaction_left_idle_by_a_frozen_worker(
    postgres_url: str,
) -> None:
    """PostgreSQL: a worker is frozen (SIGSTOP) right after it took the locks
    of a new customer's email, in its transaction. The server ends that
    transaction after IDLE_IN_TRANSACTION_TIMEOUT, so another instance's
    request for the same customer is served (before: it waited for the
    lock for 10 s and got a 503). Thawed, the frozen worker finds its
    connection closed, replaces it and answers too."""
    migrate(postgres_url)
    email = "frozen@shop.com"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    frozen_port = free_port()
    with (
        gunicorn(postgres_url, frozen_port, workers=1) as frozen_url,
        gunicorn(postgres_url, free_port(), workers=1) as other_url,
        engine.connect() as holder,
        engine.connect() as observer,
    ):
        (worker,) = gunicorn_workers(frozen_port)
        key = locks.lock_key("email", email)
        holder.exec_driver_sql(f"BEGIN; SELECT pg_advisory_xact_lock({key})")
        frozen: dict[str, tuple[int, float]] = {}
        thread = threading.Thread(
            target=lambda: frozen.update(answer=identify(frozen_url, {"email": email}))
        )
        thread.start()
        wait_until(
            lambda: waiting_for_the_lock(observer, key), "the worker never waited"
        )
        os.kill(worker, signal.SIGSTOP)
        try:
            holder.exec_driver_sql("ROLLBACK")
            wait_until(
                lambda: not waiting_for_the_lock(observer, key),
                "the lock was not granted",
            )
            status, seconds = identify(other_url, {"email": email})
        finally:
            os.kill(worker, signal.SIGCONT)
        thread.join(timeout=60)
    engine.dispose()

    assert status == 200
    assert IDLE_IN_TRANSACTION_TIMEOUT - 1 < seconds < locks.BUSY_TIMEOUT
    assert frozen["answer"][0] == 200


def test_writers_waiting_for_the_sqlite_write_lock_retry_with_growing_naps(
    tmp_path: Path,
) -> None:
    """SQLite: three writers wait 3 s for the write lock that a frozen writer
    holds. Each retries BEGIN IMMEDIATE after a nap that doubles up to a few
    milliseconds, so a waiter makes fewer than one attempt per millisecond
    (polling every 0.1 ms it made 30,000 and spent 0.6 CPU-seconds here).
    Counted in attempts, which a busy machine cannot inflate."""
    path = tmp_path / "contacts.db"
    engine = create_engine(f"sqlite:///{path}")
    prepare_engine(engine, synchronous="FULL")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    waits: list[tuple[int, float]] = []

    def wait_for_the_lock() -> None:
        with engine.connect() as connection:
            statements: list[str] = []
            locks.driver(connection).set_trace_callback(statements.append)
            started = time.monotonic()
            locks.begin_immediate(connection)
            waited = time.monotonic() - started
            locks.driver(connection).set_trace_callback(None)
            waits.append((statements.count("BEGIN IMMEDIATE"), waited))
            locks.driver(connection).execute("ROLLBACK")

    waiters = [threading.Thread(target=wait_for_the_lock) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(3)
    holder.execute("ROLLBACK")
    for waiter in waiters:
        waiter.join(timeout=30)
    holder.close()
    engine.dispose()

    assert len(waits) == 3
    for attempts, waited in waits:
        assert waited > 2.5
        assert attempts < waited * 1000, f"{attempts} attempts in {waited:.2f} s"


def test_lookups_are_answered_while_writers_wait_for_a_frozen_sqlite_writer(
    tmp_path: Path,
) -> None:
    """SQLite: another connection holds the write lock (BEGIN IMMEDIATE) as a
    frozen writer would, and three writers wait for it in the service. A
    lookup takes no lock, so lookups are still answered in under a second
    each; the writers are served once the lock is released.

    Served with 4 threads per worker process, as production serves: with
    one request per process the waiting writers held every worker."""
    url = f"sqlite:///{tmp_path / 'contacts.db'}"
    migrate(url)
    threads = {"GUNICORN_CMD_ARGS": "--threads 4"}
    with gunicorn(url, free_port(), workers=2, env=threads) as base_url:
        assert identify(base_url, {"email": "known@shop.com"})[0] == 200
        holder = sqlite3.connect(tmp_path / "contacts.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        writes: list[int] = []
        writers = [
            threading.Thread(
                target=lambda n=n: writes.append(
                    identify(base_url, {"email": f"new{n}@shop.com"})[0]
                )
            )
            for n in range(3)
        ]
        for writer in writers:
            writer.start()
        time.sleep(0.5)
        lookups = [identify(base_url, {"email": "known@shop.com"}) for _ in range(5)]
        holder.execute("ROLLBACK")
        holder.close()
        for writer in writers:
            writer.join(timeout=30)

    assert [status for status, _ in lookups] == [200] * 5
    assert max(seconds for _, seconds in lookups) < 1.0, lookups
    assert writes == [200] * 3
