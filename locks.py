"""What makes writers wait for each other, per engine (docs/guarantees.md).

SQLite has one write lock: BEGIN IMMEDIATE takes it, so every writer runs
alone. PostgreSQL runs writers side by side at READ COMMITTED, each holding
advisory locks on its identifiers and row locks on the primaries it touches,
and nothing that every writer shares: a stuck transaction holds up only the
writers of its own identifiers and customers."""

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Connection,
    Select,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from models import Contact, OneOf

# How long a writer waits for a lock before it gives up with LostRace (503):
# SQLite's write lock, or each of PostgreSQL's advisory and row locks.
BUSY_TIMEOUT = 10.0
# A writer waiting for SQLite's write lock naps 0.1 ms, then twice as long
# after each try, up to 2 ms: a short wait (another request's write, a
# fraction of a millisecond) is noticed at once, and a long one (a writer
# frozen holding the lock) costs about 500 tries a second, not 10,000.
# (Up to 5 ms halved the throughput of new primaries under 8 clients; up to
# 1 ms, three waiters burnt 0.3 CPU-seconds in 3 s.)
_BUSY_POLL = 0.0001
_BUSY_POLL_MAX = 0.002


class LostRace(Exception):
    """The request gave up without changing anything: every attempt lost a
    race, or a lock it needed stayed taken for BUSY_TIMEOUT seconds."""


def driver(connection: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `connection`: statements sent on every
    request go straight to it, at a fraction of the cost of SQLAlchemy's."""
    return cast(sqlite3.Connection, connection.connection.driver_connection)


def postgresql_sql(statement: ClauseElement) -> str:
    """`statement` compiled once for PostgreSQL as SQLAlchemy would send it
    through psycopg (parameters as %(name)s), for send()."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(statement.compile(dialect=dialect))


@dataclass(frozen=True)
class Prepared:
    """PostgreSQL: a statement that a message of several runs by name
    (`execute`, bound like any other), once `prepare` has prepared it on the
    connection. The server then plans it once per connection, not on every
    run: a message of several statements is one simple query, which psycopg
    cannot prepare (send()). Each belongs to one kind of message only, so
    that all of a message's are prepared, or none (lock_postgresql)."""

    name: str
    prepare: str
    execute: str

    @classmethod
    def of(cls, name: str, sql: str) -> "Prepared":
        """`sql` (with psycopg's %(name)s parameters) prepared as `name`."""
        order: dict[str, str] = {}

        def number(parameter: re.Match[str]) -> str:
            return order.setdefault(parameter[1], f"${len(order) + 1}")

        prepared = _PARAMETER.sub(number, sql)
        arguments = ", ".join(f"%({parameter})s" for parameter in order)
        return cls(
            name, f"PREPARE {name} AS {prepared}", f"EXECUTE {name}({arguments})"
        )


_PARAMETER = re.compile(r"%\((\w+)\)s")
# A statement for send(): its text and its parameters (None: none).
Statement = tuple[str, Mapping[str, Any] | None]
# What send() returns: the rows of each statement (none for BEGIN and such).
Rows = list[tuple[Any, ...]]


def send(connection: Connection, *statements: Statement) -> list[Rows]:
    """PostgreSQL: send `statements` straight to the driver as one message
    and return the rows of each, at a cost to this process of about 50 us a
    statement less than through SQLAlchemy.

    One statement alone has its parameters bound by the server, so psycopg
    prepares it on the connection after a few runs, as it did through
    SQLAlchemy (planning the cluster read costs the server more than running
    it). Several have their parameters written into one text (psycopg's
    ClientCursor), the one way to send them in one simple query, where each
    is planned on every run unless it runs a Prepared statement by name.
    (psycopg's pipeline mode would send prepared statements together, but
    ends with a Flush message after the Sync, which disarms the server's
    idle_in_transaction_session_timeout until the next message: a worker
    frozen right after would hold its locks.)

    What goes wrong comes out as from SQLAlchemy, for writes.retrying(): a
    DBAPIError around the driver's error, with the connection invalidated
    when the server is gone (or the process is stopped mid-message, as
    SQLAlchemy does). SQLAlchemy's transaction is begun first (it sends
    nothing), so that its rollback() ends whatever the statements began."""
    if not connection.in_transaction():
        connection.begin()
    driver = cast(psycopg.Connection[Any], connection.connection.driver_connection)
    try:
        if len(statements) == 1:
            cursor = driver.cursor()
            cursor.execute(*statements[0])
        else:
            cursor = psycopg.ClientCursor(driver)
            cursor.execute(
                "; ".join(cursor.mogrify(query, values) for query, values in statements)
            )
        found = []
        while True:
            found.append(cursor.fetchall() if cursor.description else [])
            if not cursor.nextset():
                return found
    except psycopg.Error as error:
        gone = connection.dialect.is_disconnect(
            cast(Any, error), connection.connection.dbapi_connection, None
        )
        if gone:
            connection.invalidate()
        raise DBAPIError.instance(
            "; ".join(query for query, _ in statements),
            [parameters for _, parameters in statements],
            error,
            psycopg.Error,
            connection_invalidated=gone,
        ) from error
    except BaseException as stopped:
        if not isinstance(stopped, Exception):
            connection.invalidate()
        raise


def data_version(connection: Connection) -> int | None:
    """SQLite: a number that changes whenever another connection commits
    (PRAGMA data_version). None elsewhere."""
    if connection.dialect.name != "sqlite":
        return None
    (version,) = driver(connection).execute("PRAGMA data_version").fetchone()
    return int(version)


def begin_immediate(connection: Connection) -> None:
    """SQLite: BEGIN IMMEDIATE takes the database's one write lock. Another
    connection holding it makes the statement fail at once (the service sets
    no busy timeout, whose naps of 1, 2, 5, 10 ms are far longer than a write
    here); it is retried (until_free). Raises LostRace after BUSY_TIMEOUT."""
    sqlite_connection = driver(connection)
    until_free(
        lambda: unless_busy(sqlite_connection, "BEGIN IMMEDIATE"),
        "the SQLite write lock stayed taken",
    )


def until_free(attempt: Callable[[], bool], taken: str) -> None:
    """SQLite: call `attempt` until it returns True; it returns False while
    another connection holds what it needs. It is tried again after a nap
    that starts at _BUSY_POLL and doubles up to _BUSY_POLL_MAX. Raises
    LostRace, saying what was `taken`, after BUSY_TIMEOUT."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    nap = _BUSY_POLL
    while not attempt():
        if time.monotonic() > deadline:
            raise LostRace(f"{taken} for {BUSY_TIMEOUT} s")
        time.sleep(nap)
        nap = min(2 * nap, _BUSY_POLL_MAX)


def unless_busy(sqlite_connection: sqlite3.Connection, statement: str) -> bool:
    """Run `statement`; False, and nothing done, when another connection
    holds a lock it needs (SQLITE_BUSY)."""
    try:
        sqlite_connection.execute(statement)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        return False
    return True


_PRIMARY_ID = func.coalesce(Contact.linked_id, Contact.id)


def matches(*, by_email: bool, by_phone: bool) -> ColumnElement[bool]:
    """Live rows holding the bound :email or :phone_number. A value that was
    not given is left out of the condition: a None matches nothing."""
    conditions: list[ColumnElement[bool]] = []
    if by_email:
        conditions.append(Contact.email == bindparam("email"))
    if by_phone:
        conditions.append(Contact.phone_number == bindparam("phone_number"))
    return Contact.deleted_at.is_(None) & or_(*conditions)


def _primary_locks(*, by_email: bool, by_phone: bool) -> Select[int]:
    condition = matches(by_email=by_email, by_phone=by_phone)
    return (
        select(Contact.id)
        .where(Contact.id.in_(select(_PRIMARY_ID).where(condition)))
        .order_by(Contact.created_at, Contact.id)
        .with_for_update()
    )


SHAPES = ((True, True), (True, False), (False, True))
# The savepoint that primary-row locks are taken after (relock_primaries).
_PRIMARIES = "primaries"
_PRIMARY_LOCKS = {
    (e, p): Prepared.of(
        f"identify_primaries_{e:d}{p:d}",
        postgresql_sql(_primary_locks(by_email=e, by_phone=p)),
    )
    for e, p in SHAPES
}


def _lock_timeout() -> str:
    """A PostgreSQL writer's wait for any lock ends after BUSY_TIMEOUT."""
    return f"SET LOCAL lock_timeout = {round(BUSY_TIMEOUT * 1000)}"


def _begin() -> str:
    """How every PostgreSQL writer's transaction starts: READ COMMITTED, and
    the wait limit."""
    return f"BEGIN; {_lock_timeout()}"


# identify's advisory locks of one or two identifiers, in the order given
# (ascending, lock_postgresql): the select list is evaluated left to right.
_IDENTIFIER_LOCKS = {
    count: "SELECT "
    + ", ".join(f"pg_advisory_xact_lock(%(key{n})s)" for n in range(count))
    for count in (1, 2)
}


def lock_postgresql(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    then: Sequence[tuple[Prepared, Mapping[str, Any]]],
) -> tuple[set[int], list[Rows]]:
    """PostgreSQL: begin a READ COMMITTED transaction, lock these identifiers
    and the primaries of the rows that hold them, then run the statements
    `then` (the caller's reads, with their parameters), all in one message
    (send()). Returns the ids of the primaries locked, and the rows each of
    `then` read. The reads see
    what committed while the locks were waited for (READ COMMITTED); when
    the primaries of the rows they read are not those locked, the caller
    locks those instead (relock_primaries) and reads again, until they are.

    Identifier locks stop two requests with the same new email or phone from
    both inserting a primary; primary-row locks, taken oldest first, stop a
    merge from racing an insert into the cluster it demotes. Nothing is
    shared by every writer, so a stuck transaction delays only the writers
    of its own identifiers and customers. All are released at commit or
    rollback; each wait for one ends after BUSY_TIMEOUT."""
    keys = sorted(
        lock_key(kind, value)
        for kind, value in (("email", email), ("phone", phone_number))
        if value is not None
    )
    values = {"email": email, "phone_number": phone_number}
    prepared: list[tuple[Prepared, Mapping[str, Any]]] = [
        (_PRIMARY_LOCKS[email is not None, phone_number is not None], values),
        *then,
    ]
    statements = [
        ("BEGIN", None),
        (_lock_timeout(), None),
        (_IDENTIFIER_LOCKS[len(keys)], {f"key{n}": key for n, key in enumerate(keys)}),
        (f"SAVEPOINT {_PRIMARIES}", None),
        *((statement.execute, given) for statement, given in prepared),
    ]
    # Prepared before the message on a connection that has not prepared them:
    # a message that failed for want of them would let go of its locks.
    known: set[str] = connection.connection.info.setdefault("prepared", set())
    if not known.issuperset(statement.name for statement, _ in prepared):
        _prepare(connection, prepared, known)
    try:
        results = send(connection, *statements)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) != "26000":
            raise
        # psycopg deallocates every prepared statement when it rolls back a
        # transaction: what was locked is let go, the statements prepared
        # again, and the message sent again.
        connection.rollback()
        known.clear()
        _prepare(connection, prepared, known)
        results = send(connection, *statements)
    locked, *reads = results[4:]
    return {row_id for (row_id,) in locked}, reads


def _prepare(
    connection: Connection,
    prepared: Sequence[tuple[Prepared, Mapping[str, Any]]],
    known: set[str],
) -> None:
    """Prepare those of `prepared` that the connection lacks, asking the
    server which it has: `known`, what this process noted, can be behind it
    (a PREPARE is not undone when its transaction is rolled back)."""
    (present,) = send(connection, ("SELECT name FROM pg_prepared_statements", None))
    known.clear()
    known.update(name for (name,) in present)
    missing = [statement for statement, _ in prepared if statement.name not in known]
    if missing:
        send(connection, *((statement.prepare, None) for statement in missing))
    known.update(statement.name for statement in missing)


def lock_identifiers_postgresql(connection: Connection, keys: list[int]) -> None:
    """PostgreSQL: begin a READ COMMITTED transaction and lock the identifiers
    whose lock_key() are `keys`, in ascending order as lock_postgresql does,
    so that writers of overlapping identifiers never wait in a circle; then
    set the savepoint that relock_primaries() locks primaries after. For a
    writer of many identifiers at once (an import's batch)."""
    ordered = ",".join(str(key) for key in sorted(keys))
    connection.exec_driver_sql(
        f"{_begin()}; SELECT count(pg_advisory_xact_lock(key))"
        f" FROM unnest(ARRAY[{ordered}]::bigint[]) AS key; SAVEPOINT {_PRIMARIES}"
    )


_LOCK_ROWS = (
    select(Contact.id)
    .where(OneOf(Contact.id, "ids"))
    .order_by(Contact.created_at, Contact.id)
    .with_for_update()
)


def relock_primaries(connection: Connection, ids: set[int]) -> set[int]:
    """PostgreSQL: let go of the primary rows locked so far in the caller's
    transaction and lock the rows `ids` instead, oldest first; return the ids
    of those that still exist.

    For a writer that found, once its locks were granted, that the customers
    it locked had changed: a merge, a split or an erasure committed while it
    waited. A row it locked may then be a secondary of a customer that
    another writer holds and is changing; keeping that lock while waiting
    for the new customer would make the two wait for each other until
    PostgreSQL broke the deadlock and one of them started again. Row locks
    are taken after a savepoint; rolling back to it releases them (and
    nothing else: the identifier locks and the wait limit come before it)."""
    connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_PRIMARIES}")
    return set(connection.execute(_LOCK_ROWS, {"ids": sorted(ids)}).scalars())


_CUSTOMER_OF = select(_PRIMARY_ID).where(
    Contact.id == bindparam("contact_id"), Contact.deleted_at.is_(None)
)


def lock_customer_postgresql(connection: Connection, contact_id: int) -> None:
    """PostgreSQL: begin a READ COMMITTED transaction and lock the primary row
    of the customer that live contact `contact_id` belongs to, as identify
    locks the primaries it touches (a detach or an erase). A merge may move
    the customer into another while this waits: the customer is read again
    after each lock, and when it moved, its new primary is locked instead of
    the old one (relock_primaries), until it stays put. Does nothing more
    when no live contact has that id."""
    connection.exec_driver_sql(f"{_begin()}; SAVEPOINT {_PRIMARIES}")
    locked = None
    while True:
        customer_id = connection.execute(
            _CUSTOMER_OF, {"contact_id": contact_id}
        ).scalar()
        if customer_id is None or customer_id == locked:
            return
        if locked is None:
            connection.execute(_LOCK_ROWS, {"ids": [customer_id]}).all()
        else:
            relock_primaries(connection, {customer_id})
        locked = customer_id


def lock_key(kind: str, value: str) -> int:
    """The advisory lock of an email or phone number (`kind`): 64 bits of its
    hash, so two values share a lock only by a negligible chance."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_timed_out(error: DBAPIError) -> bool:
    """PostgreSQL's lock_timeout ended the wait (SQLSTATE 55P03)."""
    return getattr(error.orig, "sqlstate", None) == "55P03"


def lost_race(error: DBAPIError) -> bool:
    """True when the transaction failed only because another one won a race."""
    cause = error.orig
    if getattr(cause, "sqlstate", None) in {"40001", "40P01"}:
        return True
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY
