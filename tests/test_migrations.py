"""The migrations build exactly the models' schema, on both engines, and
/health tells when a database is not at the latest migration."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from app import create_app
from conftest import migrate, postgres_schema
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
