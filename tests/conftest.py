"""Fixtures: every test runs on a real SQLite file and, when it answers, on
PostgreSQL (TEST_DATABASE_URL, by default the local server's `test` database).

Under CI=true an unreachable PostgreSQL fails the run instead of skipping it,
so the PostgreSQL path never silently goes untested.

Every test on PostgreSQL is marked `postgresql`; modules marked `quick` need
no server and no database process; `make check` runs those on SQLite alone,
with the Hypothesis profile `quick` (README: "Tests")."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import OperationalError

from app import create_app
from models import db

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# A tenth of each property test's examples (reference_model.examples), for `make check`.
settings.register_profile("quick", max_examples=10, deadline=None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `postgresql` every test that runs on PostgreSQL: it takes the
    session's schema, or a fixture parametrised "postgresql"."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = list(callspec.params.values()) if callspec else []
        if "postgres_url" in getattr(item, "fixturenames", ()) or (
            "postgresql" in params
        ):
            item.add_marker(pytest.mark.postgresql)


def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            return None
    except OperationalError as error:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {error.orig}"
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A schema of its own in the PostgreSQL test database, for this run only
    (so runs in parallel never meet), built by the migrations; tests then
    empty it. Dropped at the end of the run."""
    reason = postgres_unreachable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the PostgreSQL tests must run)")
    if reason:
        pytest.skip(reason)
    with postgres_schema(f"pytest_{os.getpid()}") as url:
        migrate(url)
        yield url


@contextmanager
def postgres_schema(name: str) -> Iterator[str]:
    """Create an empty schema and yield a URL whose connections use it."""
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {name}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
        engine.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file built by the migrations once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "contacts.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_file")
        shutil.copy(template, tmp_path / "contacts.db")
        return f"sqlite:///{tmp_path / 'contacts.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    app = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "API_KEYS": []}
    )
    with app.app_context():
        empty_database()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def connection(app: Flask) -> Iterator[Connection]:
    """A connection of the app's engine, set up as the app sets up its own."""
    with app.app_context(), db.engine.connect() as connection:
        yield connection


def empty_database() -> None:
    """Empty every table and restart ids at 1. Needs an app context."""
    with db.engine.begin() as connection:
        empty_tables(connection)


def migrate(database_url: str) -> None:
    """Bring the database at `database_url` to the latest migration, the way an
    operator does it, and empty the contact table."""
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    engine = create_engine(database_url)
    with engine.begin() as connection:
        empty_tables(connection)
    engine.dispose()


def empty_tables(connection: Connection) -> None:
    """Every contact, event, blocked value and import record gone; ids start
    again at 1."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text(
                "TRUNCATE contact, event, blocked_value, suppressed_value,"
                " legacy_link, erasure_key_check, webhook_endpoint,"
                " webhook_delivery, webhook_attempt, webhook_outcome,"
                " imported_file RESTART IDENTITY"
            )
        )
    else:
        connection.execute(text("DELETE FROM contact"))
        connection.execute(text("DELETE FROM event"))
        for table in (
            "webhook_attempt",
            "webhook_delivery",
            "webhook_endpoint",
            "webhook_outcome",
            "blocked_value",
            "suppressed_value",
            "legacy_link",
            "erasure_key_check",
            "imported_file",
        ):
            connection.execute(text(f"DELETE FROM {table}"))
        connection.execute(text("DELETE FROM sqlite_sequence"))


@contextmanager
def gunicorn(
    database_url: str,
    port: int,
    workers: int = 4,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.PIPE,
    health: int = 200,
) -> Iterator[str]:
    """Serve the app with real gunicorn worker processes, as production does,
    and yield its base URL once /health answers with status `health`. `env`
    adds to the environment; the app's log lines go to `stdout`, gunicorn's
    to `stderr`."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "app:app"],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=stderr,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, health)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_healthy(
    base_url: str, process: subprocess.Popen[bytes], status: int = 200
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"gunicorn exited: {error}")
        try:
            if requests.get(f"{base_url}/health", timeout=5).status_code == status:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn at {base_url} did not become healthy")
