"""Removing what is left of deleted values in the database's files (docs/operating.md:
"Backups, and where copies of an erased value remain").

Deleting a row, or setting a value to null, takes the value out of what
queries see, not out of the files. On SQLite copies stay in the WAL until it
is overwritten, and in the unused space of pages that SQLite rebuilt when it
split or merged pages while the value was still live (secure_delete zeroes
the space a delete frees, not that): only VACUUM, which builds every page
afresh from the live rows, removes them all. On PostgreSQL they stay in dead
row versions and index entries, whose space a plain VACUUM marks free
without overwriting it, and in the planner's statistics (pg_statistic),
which hold sampled values.

An erase purges at once on SQLite (writes.erase); on PostgreSQL,
and after a detach or a deleted blocked value, `flask --app app contacts
purge` does."""

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import click
import psycopg
from flask.cli import with_appcontext
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

import locks
from locks import LostRace
from models import db

# The tables whose rows hold emails and phone numbers. The others hold ids,
# times and keyed hashes.
TABLES = ("contact", "event", "blocked_value")
# How long the purge waits for each table's lock on PostgreSQL. Requests that
# need the table queue behind it meanwhile: a short wait keeps them from
# queueing long behind a transaction that holds the table (an export).
LOCK_TIMEOUT = 2.0
POSTGRESQL_REMAINS = (
    "PostgreSQL keeps copies in dead rows, index entries and statistics until"
    " `flask --app app contacts purge`"
)


class NotPurged(Exception):
    """Copies of deleted values may remain in the files; the message says why
    (it holds no value)."""


def after_erase(connection: Connection) -> str | None:
    """After an erasure has committed: on SQLite, purge the files at once
    (purge_sqlite). Returns None when no copy of a deleted value is left in
    the database's files, else where copies remain and why, for an operator."""
    if connection.dialect.name != "sqlite":
        return POSTGRESQL_REMAINS
    try:
        purge_sqlite(connection)
    except NotPurged as error:
        return f"{error}; `flask --app app contacts purge` finishes it"
    return None


def purge_sqlite(connection: Connection) -> None:
    """SQLite: rebuild the database file from its live rows (VACUUM), then copy
    the WAL into it and truncate the WAL to nothing (a TRUNCATE checkpoint):
    afterwards no byte of a deleted or nulled value is left in either.

    VACUUM takes the write lock, and the checkpoint needs every reader to
    have moved past the old WAL; each waits up to locks.BUSY_TIMEOUT.
    Writers wait while the file is rebuilt (about 5 ms per MB of file);
    readers do not. Raises NotPurged when a wait runs out or SQLite fails
    (a full disk: VACUUM needs free space for a second copy of the file);
    whatever was done stays done."""
    sqlite_connection = locks.driver(connection)
    try:
        locks.until_free(
            lambda: locks.unless_busy(sqlite_connection, "VACUUM"),
            "the SQLite write lock stayed taken",
        )
        locks.until_free(
            lambda: _checkpointed(sqlite_connection),
            "a reader or a writer kept the WAL in use",
        )
    except LostRace as error:
        raise NotPurged(str(error)) from None
    except sqlite3.Error as error:
        raise NotPurged(f"SQLite refused: {error}") from None


def _checkpointed(sqlite_connection: sqlite3.Connection) -> bool:
    """One TRUNCATE checkpoint; False when a reader or a writer kept it from
    finishing (it then copied what it could)."""
    (busy, _, _) = sqlite_connection.execute(
        "PRAGMA wal_checkpoint(TRUNCATE)"
    ).fetchone()
    return not busy


def purge_postgresql(
    connection: Connection, rewritten: Callable[[str, float], None]
) -> None:
    """PostgreSQL: rewrite each table of TABLES and its indexes from its live
    rows (VACUUM FULL) and sample its statistics afresh (ANALYZE), then
    rewrite the statistics catalog, so that no dead row, index entry or
    statistic keeps a deleted value. Calls `rewritten` with each relation
    and the seconds it took, once it is done.

    Each table is locked ACCESS EXCLUSIVE while it is rewritten: its reads
    and writes wait. The purge waits up to LOCK_TIMEOUT for each lock, and
    raises NotPurged when one stays taken, or when PostgreSQL skipped a
    relation (a role that owns neither it nor the database); the tables
    before it stay purged. `connection` must be in autocommit mode."""
    skipped: list[str] = []

    def notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "WARNING":
            skipped.append(diagnostic.message_primary or "")

    driver: Any = connection.connection.driver_connection
    driver.add_notice_handler(notice)
    connection.exec_driver_sql(f"SET lock_timeout = {round(LOCK_TIMEOUT * 1000)}")
    try:
        for relation, statement in [
            *((table, f"VACUUM (FULL, ANALYZE) {table}") for table in TABLES),
            ("pg_statistic", "VACUUM FULL pg_catalog.pg_statistic"),
        ]:
            started = time.perf_counter()
            try:
                connection.exec_driver_sql(statement)
            except DBAPIError as error:
                if not locks.lock_timed_out(error):
                    raise
                raise NotPurged(
                    f"{relation}: its lock stayed taken for {LOCK_TIMEOUT} s (a"
                    " long transaction holds it); run the purge again"
                ) from None
            if skipped:
                raise NotPurged(f"{relation}: PostgreSQL skipped it: {skipped[0]}")
            rewritten(relation, time.perf_counter() - started)
    finally:
        connection.exec_driver_sql("RESET lock_timeout")
        driver.remove_notice_handler(notice)


@click.command("purge")
@with_appcontext
def purge_command() -> None:
    """Remove what is left of deleted values in the database's files: erased
    customers on PostgreSQL (and on SQLite when an erase could not), detached
    values and deleted blocked values on both engines."""
    with db.engine.connect() as connection:
        try:
            if connection.dialect.name == "sqlite":
                started = time.perf_counter()
                purge_sqlite(connection)
                click.echo(
                    f"Rebuilt the database file and emptied its WAL in"
                    f" {time.perf_counter() - started:.2f} s: no deleted value"
                    " is left in either."
                )
                return
            purge_postgresql(
                connection,
                lambda relation, seconds: click.echo(
                    f"{relation}: rewritten in {seconds:.2f} s."
                ),
            )
        except NotPurged as error:
            raise click.ClickException(
                f"Not purged: {error}. Copies of deleted values may remain."
            ) from None
    click.echo(
        "No dead row, index entry or statistic holds a deleted value any more."
        " The WAL, archived WAL and backups keep theirs until they are recycled"
        " or expire (docs/operating.md: where copies of an erased value remain)."
    )
