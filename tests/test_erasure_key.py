"""Suppression outlives restarts only with its key: while suppressed values
exist, the service neither starts nor reports healthy without the
ERASURE_KEY they were made with, and suppresses nothing with another."""

import shutil
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app import create_app
from conftest import gunicorn
from guard import Guard
from live import free_port, start_gunicorn
from models import Contact, ErasureKeyCheck, SuppressedValue, db

KEY = "tests-erasure-key-0123"
OTHER_KEY = "another-erasure-key-4567"


def erase_one_customer(client: FlaskClient) -> None:
    """Customer 1 (two rows), erased with suppress; customer 3 stays."""
    for email, phone in (
        ("marty@hillvalley.edu", "5550123"),
        ("doc@hillvalley.edu", "5550123"),
        ("biff@hillvalley.edu", "7170000"),
    ):
        response = client.post("/identify", json={"email": email, "phoneNumber": phone})
        assert response.status_code == 200
    assert client.delete("/customers/1?suppress=true").status_code == 200


def counts(app: Flask) -> tuple[int, int]:
    with app.app_context():
        session = db.session()
        contacts = session.scalar(select(func.count()).select_from(Contact))
        suppressed = session.scalar(select(func.count()).select_from(SuppressedValue))
        return contacts or 0, suppressed or 0


def with_key(app: Flask, key: str | None) -> None:
    app.config["GUARD"] = Guard(
        builtin=True, limits=None, erasure_key=key.encode() if key else None
    )


def test_the_first_suppression_stores_a_check_value_not_the_key(
    app: Flask, client: FlaskClient
) -> None:
    with_key(app, KEY)

    erase_one_customer(client)

    with app.app_context():
        checks = db.session().scalars(select(ErasureKeyCheck.digest)).all()
    assert checks == [app.config["GUARD"].key_check()]
    assert KEY not in checks[0]


def test_suppressing_with_another_key_is_refused_and_erases_nothing(
    app: Flask, client: FlaskClient
) -> None:
    with_key(app, KEY)
    erase_one_customer(client)
    before = counts(app)
    with_key(app, OTHER_KEY)

    response = client.delete("/customers/3?suppress=true")

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "not the key" in response.get_json()["detail"]
    assert counts(app) == before


@pytest.mark.parametrize(
    ("key", "says"), [(None, "not set"), (OTHER_KEY, "not the key")]
)
def test_health_is_503_while_the_erasure_key_is_missing_or_another(
    app: Flask, client: FlaskClient, key: str | None, says: str
) -> None:
    with_key(app, KEY)
    erase_one_customer(client)
    assert client.get("/health").status_code == 200
    with_key(app, key)

    response = client.get("/health")

    assert response.status_code == 503
    assert says in response.get_json()["detail"]


def test_health_needs_no_key_while_nothing_is_suppressed(
    app: Flask, client: FlaskClient
) -> None:
    with_key(app, None)
    client.post("/identify", json={"email": "marty@hillvalley.edu"})
    assert client.delete("/customers/1").status_code == 200

    assert client.get("/health").status_code == 200


@pytest.fixture
def suppressed_database(migrated_sqlite_file: Path, tmp_path: Path) -> str:
    """A SQLite file where one customer was erased with suppress, by KEY."""
    database = shutil.copy(migrated_sqlite_file, tmp_path / "contacts.db")
    url = f"sqlite:///{database}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "API_KEYS": []})
    with_key(app, KEY)
    erase_one_customer(app.test_client())
    with app.app_context():
        db.engine.dispose()
    return url


@pytest.mark.parametrize(
    ("key", "says"),
    [("", "ERASURE_KEY is not set"), (OTHER_KEY, "not the key")],
)
def test_gunicorn_does_not_start_without_the_key_values_were_suppressed_with(
    suppressed_database: str, key: str, says: str
) -> None:
    finished = start_gunicorn({"DATABASE_URL": suppressed_database, "ERASURE_KEY": key})

    assert finished.returncode != 0
    assert "Not starting:" in finished.stderr
    assert says in finished.stderr


def test_gunicorn_starts_with_the_key_values_were_suppressed_with(
    suppressed_database: str, tmp_path: Path
) -> None:
    env = {
        "ERASURE_KEY": KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    with gunicorn(suppressed_database, free_port(), 1, env) as url:
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
