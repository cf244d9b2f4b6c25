"""Settings the service refuses to start with, and what it starts with."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from conftest import ROOT
from live import free_port
from models import db
from settings import ConfigurationError


def start_gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run gunicorn as production does until it exits on its own (or 30 s)."""
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "app:app"],
        cwd=ROOT,
        env={**os.environ, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("setting", "pragma"), [(None, 2), ("FULL", 2), ("normal", 1), ("NORMAL", 1)]
)
def test_sqlite_commits_are_synced_fully_unless_normal_is_chosen(
    migrated_sqlite_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
    pragma: int,
) -> None:
    if setting is None:
        monkeypatch.delenv("SQLITE_SYNCHRONOUS", raising=False)
    else:
        monkeypatch.setenv("SQLITE_SYNCHRONOUS", setting)
    database = shutil.copy(migrated_sqlite_file, tmp_path / "contacts.db")
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}"})

    with app.app_context(), db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        db.engine.dispose()


def test_unknown_sqlite_synchronous_stops_create_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SQLITE_SYNCHRONOUS", "OFF")

    with pytest.raises(ConfigurationError, match="SQLITE_SYNCHRONOUS must be FULL"):
        create_app()


def test_unknown_sqlite_synchronous_stops_gunicorn() -> None:
    result = start_gunicorn({"SQLITE_SYNCHRONOUS": "OFF"})

    assert result.returncode != 0
    assert "SQLITE_SYNCHRONOUS must be FULL" in result.stderr


@pytest.mark.parametrize("value", ["", ",", " , ,"])
def test_api_keys_set_without_a_key_stops_create_app(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("API_KEYS", value)

    with pytest.raises(ConfigurationError, match="API_KEYS is set but holds no key"):
        create_app()


@pytest.mark.parametrize("value", ["", ","])
def test_api_keys_set_without_a_key_stops_gunicorn(value: str) -> None:
    result = start_gunicorn({"API_KEYS": value})

    assert result.returncode != 0
    assert "API_KEYS is set but holds no key" in result.stderr
    assert "is not set" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_VALUES_PER_CUSTOMER", "0"), ("MAX_PARTNERS_PER_VALUE", "-1")],
)
def test_nonsense_limits_stop_gunicorn_with_a_message(name: str, value: str) -> None:
    finished = start_gunicorn({name: value})

    assert finished.returncode != 0
    assert f"Not starting: {name} must be a whole number" in finished.stderr


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf"])
def test_a_request_body_timeout_that_is_not_seconds_above_0_stops_gunicorn(
    value: str,
) -> None:
    finished = start_gunicorn({"REQUEST_BODY_TIMEOUT": value})

    assert finished.returncode != 0
    assert "Not starting: REQUEST_BODY_TIMEOUT must be a number" in finished.stderr
