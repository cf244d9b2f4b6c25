"""Identity reconciliation: the rules of SPEC.md, independent of HTTP."""

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Row,
    Select,
    bindparam,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.exc import DBAPIError

from models import Contact

PRIMARY = "primary"
SECONDARY = "secondary"


class Outcome(StrEnum):
    CREATED = "created"
    LINKED = "linked"
    MERGED = "merged"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Identity:
    primary_id: int
    emails: list[str]
    phone_numbers: list[str]
    secondary_ids: list[int]
    outcome: Outcome


@dataclass(frozen=True)
class _Member:
    id: int
    email: str | None
    phone_number: str | None


class LostRace(Exception):
    """The request gave up without changing anything: every attempt lost a
    race, or a lock it needed stayed taken for BUSY_TIMEOUT seconds."""


class ClusterMoved(Exception):
    """A cluster this transaction locked was merged into another before the
    lock was granted. Nothing was written; run the transaction again."""


ContactRow = Row[int, str | None, str | None, int | None, str, datetime]


def reconcile(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    alone: bool = False,
) -> Identity:
    """Return the identity that owns this email and/or phone number,
    inserting or relinking Contact rows so the database agrees with it.

    Values must already be normalised. `connection` must be outside any
    transaction, in autocommit mode (models.py sets every connection up so):
    a request that changes nothing is answered from one read, in no
    transaction. A request that writes then begins a transaction, takes its
    locks and reads again (on SQLite only if another connection committed in
    between); it never commits, the caller does. `alone` makes it
    wait until no other writer runs, then run alone among them (a retry after
    a lost race). Raises ValueError if both values are None, and ClusterMoved
    when another transaction won a race for the same cluster.
    """
    if email is None and phone_number is None:
        raise ValueError("reconcile() needs an email, a phone number, or both")

    version = _data_version(connection)
    rows = _cluster_rows(connection, email=email, phone_number=phone_number)
    if rows and not _changes(rows, email, phone_number):
        return _identity(_oldest(rows), rows, [], Outcome.UNCHANGED)
    rows = _begin_writing(
        connection,
        rows,
        version,
        email=email,
        phone_number=phone_number,
        alone=alone,
    )

    now = datetime.now(UTC)
    if not rows:
        new_id = _insert(connection, email, phone_number, None, now)
        member = _Member(new_id, email, phone_number)
        return _identity(member, [], [member], Outcome.CREATED)

    primary = _oldest(rows)
    merged = len({row.linked_id or row.id for row in rows}) > 1
    _relink(connection, primary, rows, now)
    outcome = Outcome.MERGED if merged else Outcome.UNCHANGED
    if not _brings_new(rows, email, phone_number):
        return _identity(primary, rows, [], outcome)

    # Clocks of several app instances may disagree; a secondary must never
    # look older than the primary it joins.
    created_at = max(now, max(row.created_at for row in rows))
    new_id = _insert(connection, email, phone_number, primary.id, created_at)
    added = _Member(new_id, email, phone_number)
    return _identity(primary, rows, [added], outcome if merged else Outcome.LINKED)


def reconcile_and_commit(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    attempts: int = 3,
) -> tuple[Identity, int]:
    """Run reconcile() and commit it, retrying the whole transaction after a
    lost race (a moved cluster, a deadlock or serialization failure), and once
    after finding that the server had dropped the pooled connection.

    Returns the identity and how many retries it took. A retry runs alone
    among writers, so it cannot lose again. Raises LostRace when every
    attempt lost, or at once when a lock stayed taken for BUSY_TIMEOUT; any
    other database error is re-raised at once. Rolls back on error.
    """
    for attempt in range(attempts):
        try:
            identity = reconcile(
                connection, email=email, phone_number=phone_number, alone=attempt > 0
            )
            connection.commit()
            return identity, attempt
        except (DBAPIError, ClusterMoved) as error:
            connection.rollback()
            # A pooled connection the server dropped is replaced once; checking
            # each one before use would cost a round trip on every request.
            if isinstance(error, DBAPIError) and error.connection_invalidated:
                if not attempt:
                    continue
                raise
            if isinstance(error, DBAPIError) and _lock_timed_out(error):
                raise LostRace(f"a lock stayed taken for {BUSY_TIMEOUT} s") from error
            if isinstance(error, DBAPIError) and not lost_race(error):
                raise
    raise LostRace(f"gave up after {attempts} attempts")


def _lock_timed_out(error: DBAPIError) -> bool:
    """PostgreSQL's lock_timeout ended the wait (SQLSTATE 55P03)."""
    return getattr(error.orig, "sqlstate", None) == "55P03"


def lost_race(error: DBAPIError) -> bool:
    """True when the transaction failed only because another one won a race."""
    cause = error.orig
    if getattr(cause, "sqlstate", None) in {"40001", "40P01"}:
        return True
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


_COLUMNS = (
    Contact.id,
    Contact.email,
    Contact.phone_number,
    Contact.linked_id,
    Contact.link_precedence,
    Contact.created_at,
)


_PRIMARY_ID = func.coalesce(Contact.linked_id, Contact.id)


def _matches(*, by_email: bool, by_phone: bool) -> ColumnElement[bool]:
    """Live rows holding the bound :email or :phone_number. A value that was
    not given is left out of the condition: a None matches nothing."""
    conditions: list[ColumnElement[bool]] = []
    if by_email:
        conditions.append(Contact.email == bindparam("email"))
    if by_phone:
        conditions.append(Contact.phone_number == bindparam("phone_number"))
    return Contact.deleted_at.is_(None) & or_(*conditions)


def _cluster_query(
    *, by_email: bool, by_phone: bool
) -> CompoundSelect[int, str | None, str | None, int | None, str, datetime]:
    live = Contact.deleted_at.is_(None)
    matches = _matches(by_email=by_email, by_phone=by_phone)
    hits = select(_PRIMARY_ID.label("primary_id")).where(matches).cte("hits")
    by_id = select(*_COLUMNS).join(hits, Contact.id == hits.c.primary_id)
    by_link = select(*_COLUMNS).join(hits, Contact.linked_id == hits.c.primary_id)
    return union(by_id.where(live), by_link.where(live)).order_by("id")


def _primary_locks(*, by_email: bool, by_phone: bool) -> Select[int]:
    matches = _matches(by_email=by_email, by_phone=by_phone)
    return (
        select(Contact.id)
        .where(Contact.id.in_(select(_PRIMARY_ID).where(matches)))
        .order_by(Contact.created_at, Contact.id)
        .with_for_update()
    )


# Built once: constructing a statement cost more than running it. One of
# each per shape of request: email and phone, email only, phone only.
_SHAPES = ((True, True), (True, False), (False, True))
_CLUSTER_QUERIES = {(e, p): _cluster_query(by_email=e, by_phone=p) for e, p in _SHAPES}
_PRIMARY_LOCKS = {(e, p): _primary_locks(by_email=e, by_phone=p) for e, p in _SHAPES}


def _cluster_rows(
    connection: Connection, *, email: str | None, phone_number: str | None
) -> Sequence[ContactRow]:
    """Every live row of every cluster that holds the email or the phone, in
    one statement (so in one snapshot, even outside a transaction), ascending
    id. Clusters are reached through their primary's id, so the cost is their
    size, whatever the size of the table."""
    query = _CLUSTER_QUERIES[email is not None, phone_number is not None]
    parameters = {"email": email, "phone_number": phone_number}
    return connection.execute(query, parameters).all()


def _begin_writing(
    connection: Connection,
    rows: Sequence[ContactRow],
    version: int | None,
    *,
    email: str | None,
    phone_number: str | None,
    alone: bool,
) -> Sequence[ContactRow]:
    """Begin the transaction of a request that writes, make every other writer
    of these identifiers and clusters wait for it, and read the clusters
    afresh: what this request decides from them stays true until it commits.

    On SQLite `rows` are still fresh, and are kept, when no other connection
    committed since `version` was taken, before they were read."""
    if connection.dialect.name == "postgresql":
        return _lock_clusters(
            connection, email=email, phone_number=phone_number, alone=alone
        )
    _begin_immediate(connection)
    if _data_version(connection) == version:
        return rows
    return _cluster_rows(connection, email=email, phone_number=phone_number)


def _data_version(connection: Connection) -> int | None:
    """SQLite: a number that changes whenever another connection commits
    (PRAGMA data_version, read straight through the driver). None elsewhere."""
    if connection.dialect.name != "sqlite":
        return None
    (version,) = _driver(connection).execute("PRAGMA data_version").fetchone()
    return int(version)


def _driver(connection: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `connection`: statements sent on every
    request go straight to it, at a fraction of the cost of SQLAlchemy's."""
    return cast(sqlite3.Connection, connection.connection.driver_connection)


# How long a writer waits for a lock before it gives up with LostRace (503):
# SQLite's write lock, or each of PostgreSQL's advisory and row locks.
BUSY_TIMEOUT = 10.0
_BUSY_POLL = 0.0001


def _begin_immediate(connection: Connection) -> None:
    """SQLite: BEGIN IMMEDIATE takes the database's one write lock, so every
    writer runs alone. Another connection holding it makes the statement fail
    at once (the service sets no busy timeout, whose naps of 1, 2, 5, 10 ms
    are far longer than a write here); it is retried every _BUSY_POLL seconds,
    straight through the driver. Raises LostRace after BUSY_TIMEOUT."""
    driver_connection = _driver(connection)
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            driver_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() > deadline:
                raise LostRace(
                    f"the SQLite write lock stayed taken for {BUSY_TIMEOUT} s"
                ) from error
            time.sleep(_BUSY_POLL)


# Every PostgreSQL writer holds this advisory lock, shared; a writer that must
# run alone holds it exclusively, so it waits for the writers in flight.
_WRITERS_LOCK = 0x1D3471


def _lock_clusters(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    alone: bool,
) -> Sequence[ContactRow]:
    """PostgreSQL: begin a READ COMMITTED transaction, make every writer of
    these identifiers and clusters wait for the others, then read the clusters
    afresh (READ COMMITTED reads what committed while it waited).

    Identifier locks stop two requests with the same new email or phone from
    both inserting a primary; primary-row locks, taken oldest first, stop a
    merge from racing an insert into the cluster it demotes. All are released
    at commit or rollback; each wait for one ends after BUSY_TIMEOUT. Raises
    ClusterMoved when a locked primary stopped being one while this request
    waited for it; that cannot happen to a writer that runs alone."""
    writers = "pg_advisory_xact_lock" if alone else "pg_advisory_xact_lock_shared"
    keys = sorted(
        _lock_key(kind, value)
        for kind, value in (("email", email), ("phone", phone_number))
        if value is not None
    )
    locks = [
        f"{writers}({_WRITERS_LOCK})",
        *(f"pg_advisory_xact_lock({k})" for k in keys),
    ]
    # One round trip for BEGIN, the wait limit and the locks: a statement
    # without parameters (the numbers are written into it) may hold several.
    connection.exec_driver_sql(
        f"BEGIN; SET LOCAL lock_timeout = {round(BUSY_TIMEOUT * 1000)};"
        f" SELECT {', '.join(locks)}"
    )
    lock_primaries = _PRIMARY_LOCKS[email is not None, phone_number is not None]
    parameters = {"email": email, "phone_number": phone_number}
    locked = set(connection.execute(lock_primaries, parameters).scalars())
    rows = _cluster_rows(connection, email=email, phone_number=phone_number)
    if not {row.linked_id or row.id for row in rows} <= locked:
        raise ClusterMoved
    return rows


def _lock_key(kind: str, value: str) -> int:
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _oldest(rows: Sequence[ContactRow]) -> ContactRow:
    return min(rows, key=lambda row: (row.created_at, row.id))


def _misplaced(primary: ContactRow, rows: Iterable[ContactRow]) -> list[int]:
    """Rows not yet linked straight to `primary`, the primary itself included
    when it is not marked as one (its own primary was soft-deleted)."""

    def in_place(row: ContactRow) -> bool:
        if row.id == primary.id:
            return row.linked_id is None and row.link_precedence == PRIMARY
        return bool(row.linked_id == primary.id and row.link_precedence == SECONDARY)

    return [row.id for row in rows if not in_place(row)]


def _changes(
    rows: Sequence[ContactRow], email: str | None, phone_number: str | None
) -> bool:
    return bool(_misplaced(_oldest(rows), rows)) or _brings_new(
        rows, email, phone_number
    )


_PROMOTE = (
    update(Contact)
    .where(Contact.id == bindparam("row_id"))
    .values(linked_id=None, link_precedence=PRIMARY, updated_at=bindparam("now"))
)
_LINK = (
    update(Contact)
    .where(Contact.id.in_(bindparam("row_ids", expanding=True)))
    .values(
        linked_id=bindparam("primary_id"),
        link_precedence=SECONDARY,
        updated_at=bindparam("now"),
    )
)


def _relink(
    connection: Connection,
    primary: ContactRow,
    rows: Iterable[ContactRow],
    now: datetime,
) -> None:
    """Make `primary` the only primary of `rows` and link every other row to it.

    This is the merge of rule 4, and it also heals a cluster whose primary was
    soft-deleted: its oldest live row takes over."""
    misplaced = _misplaced(primary, rows)
    if primary.id in misplaced:
        connection.execute(_PROMOTE, {"row_id": primary.id, "now": now})
    stale = [row_id for row_id in misplaced if row_id != primary.id]
    if stale:
        connection.execute(
            _LINK, {"row_ids": stale, "primary_id": primary.id, "now": now}
        )


# Built once, like the cluster queries and the updates above.
_INSERT = insert(Contact).returning(Contact.id)


def _insert(
    connection: Connection,
    email: str | None,
    phone_number: str | None,
    linked_id: int | None,
    created_at: datetime,
) -> int:
    values = {
        "email": email,
        "phone_number": phone_number,
        "linked_id": linked_id,
        "link_precedence": PRIMARY if linked_id is None else SECONDARY,
        "created_at": created_at,
        "updated_at": created_at,
    }
    return connection.execute(_INSERT, values).scalar_one()


def _brings_new(
    rows: Sequence[ContactRow], email: str | None, phone_number: str | None
) -> bool:
    new_email = email is not None and email not in {row.email for row in rows}
    new_phone = phone_number is not None and phone_number not in {
        row.phone_number for row in rows
    }
    return new_email or new_phone


def _identity(
    primary: ContactRow | _Member,
    rows: Sequence[ContactRow],
    added: list[_Member],
    outcome: Outcome,
) -> Identity:
    """The consolidated view: the primary's own values first, then the others
    in the order their rows were created (ascending id)."""
    members = [_Member(row.id, row.email, row.phone_number) for row in rows]
    members += added
    ordered = [primary, *sorted(members, key=lambda member: member.id)]
    return Identity(
        primary_id=primary.id,
        emails=_distinct(member.email for member in ordered),
        phone_numbers=_distinct(member.phone_number for member in ordered),
        secondary_ids=sorted(m.id for m in members if m.id != primary.id),
        outcome=outcome,
    )


def _distinct(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value is not None))
