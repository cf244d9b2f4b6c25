"""The migrations build exactly the models' schema, on both engines, and
/health tells when a database is not at the latest migration."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from app import create_app
from conftest import ROOT, migrate, postgres_schema
from models import db


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_url")
    with postgres_schema(f"migration_check_{os.getpid()}") as url:
        yield url


def test_upgrading_an_empty_database_gives_exactly_the_models_schema(
    empty_database_url: str,
) -> None:
    migrate(empty_database_url)

    engine = create_engine(empty_database_url)
    with engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection), db.metadata
        )
    engine.dispose()
    assert differences == []


def test_health_is_503_until_the_schema_is_migrated(empty_database_url: str) -> None:
    client = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url}).test_client()

    before = client.get("/health")
    migrate(empty_database_url)
    after = client.get("/health")

    assert before.status_code == 503
    assert before.mimetype == "application/problem+json"
    assert "db upgrade" in before.get_json()["detail"]
    assert after.status_code == 200


def test_sqlite_never_gives_a_deleted_contact_id_again_after_migration_0005(
    tmp_path: Path,
) -> None:
    """A SQLite database at 0004 whose newest contacts were deleted (3 by an
    erasure, 4 by a detach: the ledger saw them created) is upgraded. Its rows
    and links are kept, and the next contact gets id 5, not 3."""
    url = f"sqlite:///{tmp_path / 'contacts.db'}"
    env = {**os.environ, "DATABASE_URL": url}
    upgrade = [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"]
    subprocess.run(
        [*upgrade, "0004"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO contact (id, email, phone_number, linked_id,"
                " link_precedence, created_at, updated_at) VALUES"
                " (1, 'a@shop.com', '5550001', NULL, 'primary', :at, :at),"
                " (2, 'b@shop.com', '5550001', 1, 'secondary', :at, :at)"
            ),
            {"at": "2026-11-30 12:00:00.000000"},
        )
        connection.execute(
            text(
                "INSERT INTO event (type, at, customer_id, contact_ids) VALUES"
                " ('customer.created', :at, 1, '[1]'),"
                " ('customer.contact_added', :at, 1, '[2]'),"
                " ('customer.created', :at, 3, '[3]'),"
                " ('customer.contact_added', :at, 1, '[4]'),"
                " ('customer.erased', :at, 3, '[3]'),"
                " ('customer.detached', :at, 1, '[4]')"
            ),
            {"at": "2026-11-30 12:00:00.000000"},
        )
    subprocess.run(upgrade, cwd=ROOT, env=env, check=True, capture_output=True)

    client = create_app({"SQLALCHEMY_DATABASE_URI": url, "API_KEYS": []}).test_client()
    answer = client.post("/identify", json={"email": "c@shop.com"}).get_json()
    assert answer["contact"]["primaryContactId"] == 5
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, linked_id FROM contact ORDER BY id"))
        assert rows.all() == [(1, None), (2, 1), (5, None)]
        assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
    engine.dispose()


def test_a_schema_one_release_ahead_is_healthy_while_it_holds_what_the_code_uses(
    empty_database_url: str,
) -> None:
    """A release's migration ran (it added a table and a column), then the
    release was rolled back: this code serves the newer schema. A later one
    that removed a column this code uses is not served."""
    migrate(empty_database_url)
    engine = create_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE next_release (id INTEGER PRIMARY KEY)"))
        connection.execute(text("ALTER TABLE contact ADD COLUMN next_column INTEGER"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url, "API_KEYS": []})
    client = app.test_client()

    health = client.get("/health")
    answer = client.post("/identify", json={"email": "doc@fluxkart.com"})

    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE event DROP COLUMN limit_name"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0100'"))
    broken = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url})
    lacking = broken.test_client().get("/health")
    for each in (app, broken):
        with each.app_context():
            db.engine.dispose()
    engine.dispose()
    assert health.status_code == 200, health.get_json()
    assert answer.status_code == 200
    assert lacking.status_code == 503
    detail = lacking.get_json()["detail"]
    assert "newer than this code's ['0010']" in detail
    assert "event.limit_name" in detail


def test_a_schema_behind_the_code_is_503_naming_the_upgrade(
    empty_database_url: str,
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade", "0006"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url})

    response = app.test_client().get("/health")

    with app.app_context():
        db.engine.dispose()
    assert response.status_code == 503
    assert "at revision ['0006'], not ['0010']" in response.get_json()["detail"]
