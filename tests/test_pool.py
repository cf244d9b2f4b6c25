"""PostgreSQL sessions are opened once per worker thread, not per request:
each gunicorn worker keeps a pooled connection for every thread."""

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import Connection, create_engine, make_url, text

from conftest import POSTGRES_URL, gunicorn, migrate
from live import free_port

WORKERS = 2
THREADS = 4
CLIENTS = 8
REQUESTS_PER_CLIENT = 16


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own, migrated, so that the sessions it
    counts are the service's alone. Dropped at the end."""
    name = f"pool_{os.getpid()}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(POSTGRES_URL).set(database=name)
    try:
        migrate(url.render_as_string(hide_password=False))
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def sessions_opened(connection: Connection, database: str) -> int:
    """Sessions ever opened to `database`, once none is open: a session's
    count reaches pg_stat_database for certain only when it has ended."""
    deadline = time.monotonic() + 30
    while connection.execute(
        text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
        {"name": database},
    ).scalar_one():
        assert time.monotonic() < deadline, "sessions still open after 30 s"
        time.sleep(0.1)
    connection.execute(text("SELECT pg_stat_clear_snapshot()"))
    return int(
        connection.execute(
            text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        ).scalar_one()
    )


def load(base_url: str) -> int:
    """CLIENTS threads each sending REQUESTS_PER_CLIENT lookups and new
    customers at once; the requests answered."""
    answered = [0] * CLIENTS
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            with requests.Session() as session:
                while answered[index] < REQUESTS_PER_CLIENT:
                    n = answered[index]
                    body = {"email": f"c{index}n{n % 7}@pool.example.com"}
                    response = session.post(f"{base_url}/identify", json=body)
                    assert response.status_code == 200, response.text
                    answered[index] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sum(answered)


def test_postgresql_sessions_are_opened_per_worker_thread_not_per_request(
    own_database: str, tmp_path: Path
) -> None:
    url = make_url(POSTGRES_URL).set(database=own_database)
    env = {
        "WEB_THREADS": str(THREADS),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    stats = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with stats.connect() as connection:
        before = sessions_opened(connection, own_database)
        with gunicorn(
            url.render_as_string(hide_password=False), free_port(), WORKERS, env
        ) as base_url:
            answered = load(base_url)
        opened = sessions_opened(connection, own_database) - before
    stats.dispose()

    assert answered == CLIENTS * REQUESTS_PER_CLIENT
    # Each worker's threads, and gunicorn's check of the erasure key at start.
    assert opened <= WORKERS * THREADS + 1, (opened, answered)
