"""An erased value leaves the database's files, not only its rows: the raw
bytes of the SQLite file and its WAL once the erase is answered, and on
PostgreSQL the relation files once `flask contacts purge` has run."""

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, create_engine, text

import locks
import purge
from app import create_app
from guard import Guard
from live import live_service
from models import db, prepare_engine

# pg_statistic is one catalog for every schema: a test beside these, in
# another worker's schema, could leave the values they look for in its file.
# Every test here runs on one worker, one after another.
pytestmark = pytest.mark.xdist_group("erased_bytes")

ERASURE_KEY = b"tests-erasure-key-0123"
# The customer that is erased: three rows, and the merge event that paired its
# second email with its second phone.
ERASED_EMAILS = (
    "vanish.alpha.7f3a@bytes.example.com",
    "vanish.beta.7f3a@bytes.example.com",
)
ERASED_PHONES = ("4915550101", "4915550102", "4915550103")
# Another customer's values, which must stay: they show that the files read
# are the ones that hold the values.
KEPT_EMAIL = "stays.gamma.7f3a@bytes.example.com"
KEPT_PHONE = "4917770199"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def identify(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["contact"]


def customer_to_erase(client: FlaskClient) -> int:
    """Create the customer to erase and the one to keep; return the id to
    erase by."""
    first = identify(client, ERASED_EMAILS[0], ERASED_PHONES[0])
    identify(client, ERASED_EMAILS[0], ERASED_PHONES[1])
    identify(client, ERASED_EMAILS[1], ERASED_PHONES[2])
    merged = identify(client, ERASED_EMAILS[1], ERASED_PHONES[1])
    assert len(merged["secondaryContactIds"]) == 2
    identify(client, KEPT_EMAIL, KEPT_PHONE)
    primary: int = first["primaryContactId"]
    return primary


def sqlite_files(url: str) -> tuple[bytes, bytes]:
    """The raw bytes of the SQLite file at `url` and of its WAL (none when
    there is no WAL file)."""
    path = Path(url.removeprefix("sqlite:///"))
    wal = Path(f"{path}-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


def found(values: tuple[str, ...], data: bytes) -> list[str]:
    return [value for value in values if value.encode() in data]


def assert_no_erased_value_in(url: str) -> None:
    database, wal = sqlite_files(url)
    erased = ERASED_EMAILS + ERASED_PHONES
    assert found(erased, database) == [], "in the database file"
    assert found(erased, wal) == [], "in the WAL"
    assert found((KEPT_EMAIL, KEPT_PHONE), database + wal) == [KEPT_EMAIL, KEPT_PHONE]


@SQLITE
@pytest.mark.parametrize("suppress", ["false", "true"])
def test_an_erase_leaves_no_byte_of_the_values_in_the_sqlite_file_or_its_wal(
    app: Flask, client: FlaskClient, database_url: str, suppress: str
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None, erasure_key=ERASURE_KEY)
    erased = customer_to_erase(client)
    database, wal = sqlite_files(database_url)
    assert found(ERASED_EMAILS, database + wal) == list(ERASED_EMAILS)

    response = client.delete(f"/customers/{erased}?suppress={suppress}")

    assert response.status_code == 200
    assert len(response.get_json()["erasedContactIds"]) == 3
    assert_no_erased_value_in(database_url)


@SQLITE
def test_no_copy_is_left_in_pages_that_earlier_splits_and_merges_rewrote(
    client: FlaskClient, database_url: str
) -> None:
    """When SQLite splits or merges pages it may rebuild a page from its
    cells and leave their old bytes in the page's unused space, which
    secure_delete never zeroes: only a rebuilt file drops them. Here 300
    customers, every third pair merged, two thirds then erased: with SQLite
    3.40 copies of one of their emails and four of their phone numbers stay
    in index pages when the WAL is emptied into the file but the file is not
    rebuilt."""

    def email(number: int) -> str:
        return f"user.{number:04d}@pages.example.com"

    def phone(number: int) -> str:
        return f"77{number:06d}"

    ids = []
    for number in range(300):
        ids.append(identify(client, email(number), phone(number))["primaryContactId"])
        if number % 3 == 1:
            identify(client, email(number), phone(number - 1))
    # Erasing customer 3k takes 3k + 1 with it: they were merged.
    for number in range(0, 300, 3):
        assert client.delete(f"/customers/{ids[number]}").status_code == 200

    database, wal = sqlite_files(database_url)
    erased = tuple(
        value
        for number in range(300)
        if number % 3 != 2
        for value in (email(number), phone(number))
    )
    assert found(erased, database + wal) == []
    kept = tuple(
        value for number in range(2, 300, 3) for value in (email(number), phone(number))
    )
    assert found(kept, database + wal) == list(kept)


@SQLITE
def test_the_erase_command_leaves_no_byte_of_the_values_either(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    erased = customer_to_erase(client)

    result = app.test_cli_runner().invoke(
        args=["customers", "erase", str(erased), "--yes"]
    )

    assert result.exit_code == 0, result.output
    assert_no_erased_value_in(database_url)
    assert "No copy of its values is left in the database file or its WAL." in (
        result.output
    )


def test_an_erase_answered_by_gunicorn_leaves_no_byte_of_the_values(
    tmp_path: Path,
) -> None:
    """Real workers, each with its own pooled connections, serve the requests
    before and after the erase."""
    with live_service(tmp_path, env={"ERASURE_KEY": ERASURE_KEY.decode()}) as url:
        session = requests.Session()

        def post(email: str, phone: str) -> Any:
            answer = session.post(
                f"{url}/identify", json={"email": email, "phoneNumber": phone}
            )
            assert answer.status_code == 200, answer.text
            return answer.json()["contact"]

        first = post(ERASED_EMAILS[0], ERASED_PHONES[0])
        post(ERASED_EMAILS[0], ERASED_PHONES[1])
        post(ERASED_EMAILS[1], ERASED_PHONES[2])
        post(ERASED_EMAILS[1], ERASED_PHONES[1])
        post(KEPT_EMAIL, KEPT_PHONE)

        erased = session.delete(
            f"{url}/customers/{first['primaryContactId']}?suppress=true"
        )

        assert erased.status_code == 200
        assert erased.json() == {
            "erasedContactIds": [1, 2, 3],
            "suppressed": 5,
            "dryRun": False,
        }
        assert_no_erased_value_in(f"sqlite:///{tmp_path / 'contacts.db'}")


@SQLITE
def test_an_erase_a_long_reader_keeps_from_purging_is_answered_and_purged_later(
    app: Flask,
    client: FlaskClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reader that started before the erase still reads the old WAL, so
    the WAL cannot be emptied until it ends. The erase is committed and
    answered after BUSY_TIMEOUT all the same, with a warning; `contacts
    purge` removes the copies once the reader is gone."""
    erased = customer_to_erase(client)
    monkeypatch.setattr(locks, "BUSY_TIMEOUT", 0.2)
    reader = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM contact").fetchone() == (4,)
    capsys.readouterr()

    response = client.delete(f"/customers/{erased}")

    assert response.status_code == 200
    assert client.get(f"/customers/{erased}").status_code == 404
    warning = capsys.readouterr().out
    assert "copies of erased values remain" in warning
    assert "kept the WAL in use for 0.2 s" in warning
    database, wal = sqlite_files(database_url)
    assert found(ERASED_EMAILS, database + wal) != []

    reader.rollback()
    reader.close()
    result = app.test_cli_runner().invoke(args=["contacts", "purge"])

    assert result.exit_code == 0, result.output
    assert "no deleted value is left in either" in result.output
    assert_no_erased_value_in(database_url)


@SQLITE
def test_the_purge_command_removes_what_a_detach_left_in_the_sqlite_files(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    """A detach deletes and nulls its value without rebuilding the file."""
    customer = customer_to_erase(client)
    detached = client.post(
        f"/customers/{customer}/detach", json={"phoneNumber": ERASED_PHONES[0]}
    )
    assert detached.status_code == 200
    database, wal = sqlite_files(database_url)
    assert found(ERASED_PHONES[:1], database + wal) == [ERASED_PHONES[0]]

    result = app.test_cli_runner().invoke(args=["contacts", "purge"])

    assert result.exit_code == 0, result.output
    assert "no deleted value is left in either" in result.output
    database, wal = sqlite_files(database_url)
    assert found(ERASED_PHONES[:1], database + wal) == []
    kept = (*ERASED_EMAILS, *ERASED_PHONES[1:], KEPT_EMAIL, KEPT_PHONE)
    assert found(kept, database + wal) == list(kept)


def test_every_sqlite_connection_zeroes_freed_space_whatever_the_build_default(
    tmp_path: Path,
) -> None:
    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "contacts.db")
        connection.execute("PRAGMA secure_delete = OFF")
        return connection

    engine = create_engine("sqlite://", creator=connect)
    prepare_engine(engine, synchronous="FULL")

    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    engine.dispose()


def relation_files(connection: Connection) -> dict[str, Path]:
    """The file of every table and index of the test's schema, and of the
    statistics catalog. Fails under CI=true, else skips, when they cannot be
    read from here."""
    directory = Path(
        connection.scalar(text("SELECT current_setting('data_directory')"))
    )
    files = {
        name: directory / path
        for name, path in connection.execute(
            text(
                "SELECT relname, pg_relation_filepath(oid) FROM pg_class"
                " WHERE relnamespace = current_schema()::regnamespace"
                " AND relkind IN ('r', 'i')"
                " UNION ALL SELECT 'pg_statistic',"
                " pg_relation_filepath('pg_catalog.pg_statistic')"
            )
        )
    }
    if not os.access(files["contact"], os.R_OK):
        reason = f"PostgreSQL's files are not readable here ({directory})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true: this test must run")
        pytest.skip(reason)
    return files


def copies(files: dict[str, Path], values: tuple[str, ...]) -> dict[str, list[str]]:
    """Which of `values` each file holds (files holding none left out)."""
    held = {}
    for name, path in files.items():
        data = path.read_bytes() if path.exists() else b""
        if hits := found(values, data):
            held[name] = hits
    return held


def purge_postgresql(app: Flask) -> Result:
    """`contacts purge`, run again (as its message says) while a transaction
    of another test run in the same database holds the statistics catalog."""
    for _ in range(3):
        result = app.test_cli_runner().invoke(args=["contacts", "purge"])
        if "its lock stayed taken" not in result.output:
            break
    return result


@POSTGRESQL
def test_the_purge_command_leaves_no_copy_in_postgresql_tables_indexes_or_statistics(
    app: Flask, client: FlaskClient, connection: Connection
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None, erasure_key=ERASURE_KEY)
    erased = customer_to_erase(client)
    # Statistics sample the values, as autovacuum's ANALYZE does on its own.
    connection.exec_driver_sql("ANALYZE contact, event")
    assert client.delete(f"/customers/{erased}?suppress=true").status_code == 200
    connection.exec_driver_sql("CHECKPOINT")
    values = ERASED_EMAILS + ERASED_PHONES
    before = relation_files(connection)
    left = copies(before, values)
    assert {"contact", "event", "ix_event_email", "pg_statistic"} <= set(left), left

    result = purge_postgresql(app)

    assert result.exit_code == 0, result.output
    assert "event: rewritten in" in result.output
    connection.exec_driver_sql("CHECKPOINT")
    after = relation_files(connection)
    assert copies(after, values) == {}
    assert copies({name: before[name] for name in left}, values) == {}
    assert copies(after, (KEPT_EMAIL, KEPT_PHONE))["contact"] == [
        KEPT_EMAIL,
        KEPT_PHONE,
    ]
    stats = connection.scalar(
        text(
            "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema()"
            " AND histogram_bounds::text LIKE '%vanish%'"
        )
    )
    assert stats == 0


@POSTGRESQL
def test_the_purge_command_fails_when_postgresql_skips_a_table_it_may_not_rewrite(
    app: Flask, database_url: str
) -> None:
    """A role that owns neither the tables nor the database: VACUUM skips
    them with a warning, which must not read as a purge."""
    role = f"purge_test_{os.getpid()}"
    owner = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        schema = connection.scalar(text("SELECT current_schema()"))
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    url = database_url.replace("//postgres@", f"//{role}@", 1)
    assert url != database_url
    other = create_app({"SQLALCHEMY_DATABASE_URI": url, "API_KEYS": []})
    try:
        result = other.test_cli_runner().invoke(args=["contacts", "purge"])
    finally:
        with other.app_context():
            db.engine.dispose()
        with owner.connect() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        owner.dispose()

    assert result.exit_code != 0, result.output
    assert "Not purged: contact: PostgreSQL skipped it" in result.output


@POSTGRESQL
def test_the_purge_command_stops_and_says_so_when_a_transaction_holds_a_table(
    app: Flask, connection: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that need a table queue behind the purge while it waits for
    the table's lock: it waits LOCK_TIMEOUT, then stops. The tables before
    it stay purged."""
    monkeypatch.setattr(purge, "LOCK_TIMEOUT", 0.2)
    with db.engine.connect() as holder:
        holder.exec_driver_sql("BEGIN; LOCK TABLE event IN ACCESS SHARE MODE")
        result = app.test_cli_runner().invoke(args=["contacts", "purge"])
        holder.exec_driver_sql("ROLLBACK")

    assert result.exit_code != 0
    assert "contact: rewritten in" in result.output
    assert "Not purged: event: its lock stayed taken for 0.2 s" in result.output
