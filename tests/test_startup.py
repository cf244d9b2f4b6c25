"""Settings the service refuses to start with, and what it starts with."""

import shutil
from pathlib import Path

import pytest

from app import create_app
from conftest import ROOT, gunicorn
from live import free_port, start_gunicorn
from models import db
from settings import ConfigurationError, database_pool_size, database_url


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


@pytest.mark.parametrize(
    "url",
    [
        "mysql://shop:s3cret-pw@db.example/shop",
        "sqlite-file.db",
        "postgresql+asyncpg://shop:s3cret-pw@db.example/shop",
    ],
)
def test_an_unsupported_database_url_stops_gunicorn_with_one_line_not_a_traceback(
    url: str,
) -> None:
    finished = start_gunicorn({"DATABASE_URL": url})

    assert finished.returncode != 0
    assert finished.stderr.strip().count("\n") == 0, finished.stderr
    assert "Not starting: DATABASE_URL must be sqlite:///PATH" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert "s3cret-pw" not in finished.stderr


def test_an_unsupported_database_url_stops_create_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://shop@db.example/shop")

    with pytest.raises(ConfigurationError, match="DATABASE_URL must be"):
        create_app()


def served_log(env: dict[str, str], tmp_path: Path) -> str:
    """gunicorn's log from start to a stop after its first health answer."""
    log = tmp_path / "gunicorn.log"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env}
    url = env.pop("DATABASE_URL")
    with log.open("w") as stderr, gunicorn(url, free_port(), 1, env, stderr=stderr):
        pass
    return log.read_text()


def test_gunicorn_names_the_engine_and_database_at_start_without_the_password(
    postgres_url: str, tmp_path: Path
) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:s3cret-pw@")
    env = {"DATABASE_URL": with_password, "PGPASSWORD": "s3cret-pw"}

    log = served_log(env, tmp_path)

    assert "Serving the PostgreSQL database test on host 127.0.0.1 port 5432" in log
    assert "as user postgres" in log
    assert "s3cret-pw" not in log
    assert "SQLite" not in log


def test_gunicorn_warns_when_a_platform_port_meets_a_sqlite_file(
    migrated_sqlite_file: Path, tmp_path: Path
) -> None:
    database = shutil.copy(migrated_sqlite_file, tmp_path / "contacts.db")

    log = served_log({"DATABASE_URL": f"sqlite:///{database}"}, tmp_path)

    assert f"Serving the SQLite file {database}" in log
    assert "PORT is set, as a hosting platform sets it, but the database is a" in log


def test_a_relative_sqlite_path_is_the_same_file_in_the_instance_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///contacts.db")

    assert database_url() == f"sqlite:///{ROOT / 'instance' / 'contacts.db'}"


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan", "inf"])
def test_a_request_body_timeout_that_is_not_seconds_above_0_stops_gunicorn(
    value: str,
) -> None:
    finished = start_gunicorn({"REQUEST_BODY_TIMEOUT": value})

    assert finished.returncode != 0
    assert "Not starting: REQUEST_BODY_TIMEOUT must be a number" in finished.stderr


@pytest.mark.parametrize("value", ["0", "four", "-2"])
def test_web_threads_that_are_not_a_whole_number_stop_gunicorn(value: str) -> None:
    finished = start_gunicorn({"WEB_THREADS": value})

    assert finished.returncode != 0
    assert "Not starting: WEB_THREADS must be a whole number" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_zero_web_concurrency_stops_gunicorn_rather_than_serve_without_workers() -> (
    None
):
    """gunicorn itself refuses a WEB_CONCURRENCY that is no number or is
    negative, before reading gunicorn.conf.py; 0 it would run with, no worker
    answering."""
    finished = start_gunicorn({"WEB_CONCURRENCY": "0"})

    assert finished.returncode != 0
    assert "Not starting: WEB_CONCURRENCY must be a whole number" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_pool_smaller_than_the_threads_stops_gunicorn() -> None:
    finished = start_gunicorn({"WEB_THREADS": "4", "DATABASE_POOL_SIZE": "2"})

    assert finished.returncode != 0
    assert "DATABASE_POOL_SIZE (2) must be at least WEB_THREADS (4)" in finished.stderr


def test_the_pool_holds_a_connection_per_thread_unless_told_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_POOL_SIZE", raising=False)
    monkeypatch.setenv("WEB_THREADS", "6")
    assert database_pool_size() == 6

    monkeypatch.setenv("DATABASE_POOL_SIZE", "8")
    assert database_pool_size() == 8

    monkeypatch.setenv("DATABASE_POOL_SIZE", "5")
    with pytest.raises(ConfigurationError, match="must be at least WEB_THREADS"):
        create_app()
