"""Reading the rows the rules need and applying their decisions: the contact
rows and their ledger events, in one transaction, under the locks of locks.py.

A request that changes nothing is answered from one read, in no transaction.
A request that writes begins its transaction, takes its locks, reads again
and decides again from what it now holds (reconcile.decide), then writes."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    CompoundSelect,
    Connection,
    bindparam,
    func,
    insert,
    select,
    union,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

import ledger
import locks
from locks import ClusterMoved, LostRace
from models import Contact
from reconcile import (
    PRIMARY,
    SECONDARY,
    Decision,
    Event,
    Identity,
    Member,
    decide,
    views,
)

# Checks and normalises an email no row holds (validation.check_email).
EmailCheck = Callable[[str], str]

_COLUMNS = (
    Contact.id,
    Contact.email,
    Contact.phone_number,
    Contact.linked_id,
    Contact.link_precedence,
    Contact.created_at,
)
_PRIMARY_ID = func.coalesce(Contact.linked_id, Contact.id)
_LIVE = Contact.deleted_at.is_(None)


def _cluster_query(
    *, by_email: bool, by_phone: bool
) -> CompoundSelect[int, str | None, str | None, int | None, str, datetime]:
    condition = locks.matches(by_email=by_email, by_phone=by_phone)
    hits = select(_PRIMARY_ID.label("primary_id")).where(condition).distinct()
    hits_cte = hits.cte("hits")
    by_id = select(*_COLUMNS).join(hits_cte, Contact.id == hits_cte.c.primary_id)
    by_link = select(*_COLUMNS).join(
        hits_cte, Contact.linked_id == hits_cte.c.primary_id
    )
    return union(by_id.where(_LIVE), by_link.where(_LIVE)).order_by("id")


# Built once: constructing a statement cost more than running it. One of
# each per shape of request: email and phone, email only, phone only. On
# SQLite they are also compiled once, and sent straight to the driver.
_CLUSTER_QUERIES = {
    (e, p): _cluster_query(by_email=e, by_phone=p) for e, p in locks.SHAPES
}
_SQLITE_CLUSTER_QUERIES = {
    shape: str(query.compile(dialect=sqlite.dialect(paramstyle="named")))
    for shape, query in _CLUSTER_QUERIES.items()
}


def read_clusters(
    connection: Connection, *, email: str | None, phone_number: str | None
) -> list[Member]:
    """Every live row of every cluster that holds the email or the phone, in
    one statement (so in one snapshot, even outside a transaction), ascending
    id. Clusters are reached through their primary's id, so the cost is their
    size, whatever the size of the table."""
    shape = email is not None, phone_number is not None
    parameters = {"email": email, "phone_number": phone_number}
    if connection.dialect.name == "sqlite":
        cursor = locks.driver(connection).execute(
            _SQLITE_CLUSTER_QUERIES[shape], parameters
        )
        return [
            Member(row_id, row_email, row_phone, linked_id, precedence, _utc(created))
            for row_id, row_email, row_phone, linked_id, precedence, created in cursor
        ]
    return [
        Member(*row) for row in connection.execute(_CLUSTER_QUERIES[shape], parameters)
    ]


def _utc(value: str) -> datetime:
    """A timestamp as SQLAlchemy's DateTime stores it on SQLite (UTC, no zone)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def identify(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    request_id: str | None,
    check_email: EmailCheck | None = None,
    alone: bool = False,
) -> tuple[Identity, list[Event]]:
    """The customer that owns this email and/or phone number, after inserting
    or relinking contact rows and appending their events as the rules decide.

    `connection` must be in autocommit mode, outside any transaction
    (models.py sets every connection up so). A request that writes commits
    before this returns. `alone` makes a PostgreSQL writer wait until no other
    writer runs, then run alone among them (a retry after a lost race).
    `check_email`, when given, checks and normalises an email that no row
    holds (see _read_checked). Raises ClusterMoved when another transaction
    won a race for a cluster."""
    version = locks.data_version(connection)
    rows, email = _read_checked(connection, email, phone_number, check_email)
    decision = decide(rows, email=email, phone_number=phone_number, now=_now())
    if not decision.changes:
        return decision.answer(), []
    rows = _begin_writing(
        connection,
        rows,
        version,
        email=email,
        phone_number=phone_number,
        alone=alone,
    )
    now = _now()
    decision = decide(rows, email=email, phone_number=phone_number, now=now)
    if not decision.changes:
        connection.rollback()
        return decision.answer(), []
    identity, events = apply(connection, decision)
    ledger.append_and_commit(connection, events, at=now, request_id=request_id)
    return identity, events


@dataclass(frozen=True)
class Served:
    identity: Identity
    events: list[Event]
    retries: int


def identify_and_commit(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    request_id: str | None,
    check_email: EmailCheck | None = None,
    attempts: int = 3,
) -> Served:
    """Run identify(), retrying the whole transaction after a lost race (a
    moved cluster, a deadlock or serialization failure), and once after
    finding that the server had dropped the pooled connection.

    Returns the answer, the events appended and how many retries it took. A
    retry runs alone among writers, so it cannot lose again. Raises LostRace when every
    attempt lost, or at once when a lock stayed taken for BUSY_TIMEOUT; any
    other error is re-raised at once. Rolls back on error."""
    for attempt in range(attempts):
        try:
            identity, events = identify(
                connection,
                email=email,
                phone_number=phone_number,
                request_id=request_id,
                check_email=check_email,
                alone=attempt > 0,
            )
            return Served(identity, events, attempt)
        except (DBAPIError, ClusterMoved) as error:
            connection.rollback()
            # A pooled connection the server dropped is replaced once; checking
            # each one before use would cost a round trip on every request.
            if isinstance(error, DBAPIError) and error.connection_invalidated:
                if not attempt:
                    continue
                raise
            if isinstance(error, DBAPIError) and locks.lock_timed_out(error):
                raise LostRace(
                    f"a lock stayed taken for {locks.BUSY_TIMEOUT} s"
                ) from error
            if isinstance(error, DBAPIError) and not locks.lost_race(error):
                raise
        except BaseException:
            connection.rollback()
            raise
    raise LostRace(f"gave up after {attempts} attempts")


def _read_checked(
    connection: Connection,
    email: str | None,
    phone_number: str | None,
    check_email: EmailCheck | None,
) -> tuple[list[Member], str | None]:
    """The first read of a request, and its email as it will be used.

    An email that a row holds was checked when that row was stored, so the
    check (the costliest step of parsing) runs only for an email no row
    holds, and the clusters are read again if it changed the email."""
    rows = read_clusters(connection, email=email, phone_number=phone_number)
    if email is None or check_email is None or any(r.email == email for r in rows):
        return rows, email
    checked = check_email(email)
    if checked != email:
        rows = read_clusters(connection, email=checked, phone_number=phone_number)
    return rows, checked


def _now() -> datetime:
    return datetime.now(UTC)


def _begin_writing(
    connection: Connection,
    rows: Sequence[Member],
    version: int | None,
    *,
    email: str | None,
    phone_number: str | None,
    alone: bool,
) -> list[Member]:
    """Begin the transaction of a request that writes, make every other writer
    of these identifiers and clusters wait for it, and read the clusters
    afresh: what it decides from them stays true until it commits.

    On SQLite `rows` are still fresh, and are kept, when no other connection
    committed since `version` was taken, before they were read."""
    if connection.dialect.name == "postgresql":
        locked = locks.lock_postgresql(
            connection, email=email, phone_number=phone_number, alone=alone
        )
        fresh = read_clusters(connection, email=email, phone_number=phone_number)
        if not {row.customer_id for row in fresh} <= locked:
            raise ClusterMoved
        return fresh
    locks.begin_immediate(connection)
    if locks.data_version(connection) == version:
        return list(rows)
    return read_clusters(connection, email=email, phone_number=phone_number)


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
_INSERT = insert(Contact).returning(Contact.id)


def apply(connection: Connection, decision: Decision) -> tuple[Identity, list[Event]]:
    """Write the decision's contact rows in the caller's transaction; return
    its answer and events with the inserted row's id."""
    now = _now()
    if decision.promote is not None:
        connection.execute(_PROMOTE, {"row_id": decision.promote, "now": now})
    if decision.relink:
        connection.execute(
            _LINK,
            {
                "row_ids": list(decision.relink),
                "primary_id": decision.primary_id,
                "now": now,
            },
        )
    new_id = None
    if decision.insert is not None:
        row = decision.insert
        values = {
            "email": row.email,
            "phone_number": row.phone_number,
            "linked_id": row.linked_id,
            "link_precedence": PRIMARY if row.linked_id is None else SECONDARY,
            "created_at": row.created_at,
            "updated_at": row.created_at,
        }
        new_id = connection.execute(_INSERT, values).scalar_one()
    return decision.settle(new_id)


def lookup(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    check_email: EmailCheck | None = None,
) -> list[Identity]:
    """The customers the email or the phone belongs to (0, 1 or 2), ascending
    primary id, from one read. Never writes."""
    rows, _ = _read_checked(connection, email, phone_number, check_email)
    return views(rows)


_CUSTOMER_OF = (
    select(_PRIMARY_ID)
    .where(Contact.id == bindparam("contact_id"), _LIVE)
    .scalar_subquery()
)
_CUSTOMER = (
    select(*_COLUMNS)
    .where(
        _LIVE,
        (Contact.id == _CUSTOMER_OF) | (Contact.linked_id == _CUSTOMER_OF),
    )
    .order_by(Contact.id)
)


def customer(connection: Connection, contact_id: int) -> Identity | None:
    """The customer that live contact `contact_id` belongs to, or None."""
    rows = connection.execute(_CUSTOMER, {"contact_id": contact_id})
    found = views([Member(*row) for row in rows])
    return found[0] if found else None
