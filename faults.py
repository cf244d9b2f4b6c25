"""What is wrong with the database, in words an operator can act on, and
which failures leave a connection unfit to keep (docs/api.md: "Errors", "GET /health").

SQLite statements sent straight to the driver (reads.py, store.py, ledger.py, locks.py)
raise sqlite3 errors; those SQLAlchemy sends raise its DBAPIError around them."""

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

# /health reports a SQLite disk with less free space than this as full: a
# write appends a few pages to the WAL, which grows up to 16 MiB between
# checkpoints (models.prepare_engine), so even a little more is close to it.
MIN_FREE_BYTES = 1024 * 1024

# A SQLite connection that met one of these keeps failing after the cause is
# fixed: one opened while its file could not be written stays read-only.
_BROKEN = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CANTOPEN,
}
FULL = "The database's disk is full."
READ_ONLY = "The database is read-only."
IO_ERROR = "The database's disk failed to read or write (I/O error)."
UNREACHABLE = "The database is unreachable or not ready."


def _cause(error: BaseException) -> BaseException:
    if isinstance(error, DBAPIError) and error.orig is not None:
        return error.orig
    return error


def broken(error: BaseException) -> bool:
    """True when the connection that raised `error` must be discarded, not
    pooled again: a SQLite file that was read-only, full or failing."""
    code = getattr(_cause(error), "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BROKEN


def describe(error: BaseException, database: str | None) -> str:
    """What went wrong, for a 503's detail. `database` is the SQLite file."""
    cause = _cause(error)
    sqlstate = getattr(cause, "sqlstate", None)
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL or sqlstate == "53100":
        return FULL
    if code == sqlite3.SQLITE_READONLY or sqlstate == "25006":
        return READ_ONLY
    if code in _BROKEN and database and _read_only(Path(database)):
        return READ_ONLY
    if code == sqlite3.SQLITE_IOERR:
        return IO_ERROR
    return UNREACHABLE


def cannot_write(connection: Connection) -> str | None:
    """Why the database cannot take writes now, or None. Costs a stat of the
    SQLite file and its file system, or one `SHOW` on PostgreSQL; writes
    nothing."""
    if connection.dialect.name == "postgresql":
        read_only = connection.exec_driver_sql("SHOW transaction_read_only").scalar()
        return READ_ONLY if read_only == "on" else None
    database = connection.engine.url.database
    if not database or database == ":memory:":
        return None
    if _read_only(Path(database)):
        return READ_ONLY
    disk = os.statvfs(Path(database).parent)
    if disk.f_bavail * disk.f_frsize < MIN_FREE_BYTES:
        return FULL
    return None


def _read_only(database: Path) -> bool:
    """The file, or its directory (where the WAL and its index go), exists but
    cannot be written: a read-only mount or permissions."""
    directory = database.parent
    if not directory.is_dir():
        return False
    if database.exists() and not os.access(database, os.W_OK):
        return True
    return not os.access(directory, os.W_OK)
