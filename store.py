"""Reading the rows the rules need and applying their decisions: the contact
rows and their ledger events, in one transaction, under the locks of locks.py.

A request that changes nothing is answered from one read, in no transaction.
A request that writes begins its transaction, takes its locks, reads again
and decides again from what it now holds (reconcile.decide), then writes."""

from collections.abc import Sequence
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
from locks import LostRace
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
) -> tuple[Identity, list[Event]]:
    """The customer that owns this email and/or phone number, after inserting
    or relinking contact rows and appending their events as the rules decide.

    `connection` must be in autocommit mode, outside any transaction
    (models.py sets every connection up so). A request that writes commits
    before this returns."""
    version = locks.data_version(connection)
    rows = read_clusters(connection, email=email, phone_number=phone_number)
    decision = decide(rows, email=email, phone_number=phone_number, now=_now())
    if not decision.changes:
        return decision.answer(), []
    rows = _begin_writing(
        connection,
        rows,
        version,
        email=email,
        phone_number=phone_number,
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
    attempts: int = 3,
) -> Served:
    """Run identify(), retrying the whole transaction after PostgreSQL broke
    a deadlock (the only race a writer can lose: a cluster merged away while
    it waited is followed inside its transaction, _begin_writing), and once
    after finding that the server had dropped the pooled connection.

    Returns the answer, the events appended and how many retries it took.
    Raises LostRace when every attempt lost, or at once when a lock stayed
    taken for BUSY_TIMEOUT; any other error is re-raised at once. Rolls back
    on error."""
    for attempt in range(attempts):
        try:
            identity, events = identify(
                connection,
                email=email,
                phone_number=phone_number,
                request_id=request_id,
            )
            return Served(identity, events, attempt)
        except DBAPIError as error:
            connection.rollback()
            # A pooled connection the server dropped is replaced once; checking
            # each one before use would cost a round trip on every request.
            if error.connection_invalidated:
                if not attempt:
                    continue
                raise
            if locks.lock_timed_out(error):
                raise LostRace(
                    f"a lock stayed taken for {locks.BUSY_TIMEOUT} s"
                ) from error
            if not locks.lost_race(error):
                raise
        except BaseException:
            connection.rollback()
            raise
    raise LostRace(f"gave up after {attempts} attempts")


def _now() -> datetime:
    return datetime.now(UTC)


def _begin_writing(
    connection: Connection,
    rows: Sequence[Member],
    version: int | None,
    *,
    email: str | None,
    phone_number: str | None,
) -> list[Member]:
    """Begin the transaction of a request that writes, make every other writer
    of these identifiers and clusters wait for it, and read the clusters
    afresh: what it decides from them stays true until it commits.

    On PostgreSQL a primary it locked may have been merged into another while
    it waited: the fresh read then holds rows of a primary it has not locked.
    It locks those too and reads again, until every row read belongs to a
    primary it holds. Each further round means another merge committed
    meanwhile, and the locked set only grows, so it ends. (README:
    "Concurrency".)

    On SQLite `rows` are still fresh, and are kept, when no other connection
    committed since `version` was taken, before they were read."""
    if connection.dialect.name == "postgresql":
        locked = locks.lock_postgresql(
            connection, email=email, phone_number=phone_number
        )
        while True:
            fresh = read_clusters(connection, email=email, phone_number=phone_number)
            moved = {row.customer_id for row in fresh} - locked
            if not moved:
                return fresh
            locks.lock_primaries(connection, moved)
            locked |= moved
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
    connection: Connection, *, email: str | None, phone_number: str | None
) -> list[Identity]:
    """The customers the email or the phone belongs to (0, 1 or 2), ascending
    primary id, from one read. Never writes."""
    return views(read_clusters(connection, email=email, phone_number=phone_number))


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
