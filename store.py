"""Reading the rows the rules need and applying their decisions: the contact
rows and their ledger events, in one transaction, under the locks of locks.py.

A request that changes nothing is answered from one read, in no transaction.
A request that writes begins its transaction, takes its locks, reads again
and decides again from what it now holds (reconcile.decide), then writes."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Select,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    true,
    union,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

import ledger
import locks
from guard import NO_GUARD, Guard
from locks import LostRace
from models import BlockedValue, Contact
from reconcile import (
    EMAIL,
    PHONE_NUMBER,
    PRIMARY,
    SECONDARY,
    Decision,
    Event,
    Identity,
    Ignored,
    Member,
    Partners,
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
    return _cluster_union(by_email=by_email, by_phone=by_phone).order_by("id")


def _cluster_union(
    *, by_email: bool, by_phone: bool
) -> CompoundSelect[int, str | None, str | None, int | None, str, datetime]:
    condition = locks.matches(by_email=by_email, by_phone=by_phone)
    hits = select(_PRIMARY_ID.label("primary_id")).where(condition).distinct()
    hits_cte = hits.cte("hits")
    by_id = select(*_COLUMNS).join(hits_cte, Contact.id == hits_cte.c.primary_id)
    by_link = select(*_COLUMNS).join(
        hits_cte, Contact.linked_id == hits_cte.c.primary_id
    )
    return union(by_id.where(_LIVE), by_link.where(_LIVE))


def _flagged_cluster_query(*, by_email: bool, by_phone: bool) -> Select[Any]:
    """PostgreSQL: whether the email and the phone are blocked values, and the
    cluster rows, in one statement: a row of flags, left-joined to the rows."""
    flags = select(
        exists().where(BlockedValue.email == bindparam("email")).label("email_blocked"),
        exists()
        .where(BlockedValue.phone_number == bindparam("phone_number"))
        .label("phone_blocked"),
    ).subquery("flags")
    cluster = _cluster_union(by_email=by_email, by_phone=by_phone).subquery("cluster")
    return (
        select(flags.c.email_blocked, flags.c.phone_blocked, *cluster.c)
        .select_from(flags.outerjoin(cluster, true()))
        .order_by(cluster.c.id)
    )


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
_FLAGGED_CLUSTER_QUERIES = {
    (e, p): _flagged_cluster_query(by_email=e, by_phone=p) for e, p in locks.SHAPES
}
_SQLITE_BLOCKED = (
    "SELECT EXISTS (SELECT 1 FROM blocked_value WHERE email = :email),"
    " EXISTS (SELECT 1 FROM blocked_value WHERE phone_number = :phone_number)"
)
_MERGE_PARTNERS = text(
    "SELECT phone_number, NULL FROM event"
    " WHERE type = 'customer.merged' AND email = :email AND phone_number IS NOT NULL"
    " UNION SELECT NULL, email FROM event"
    " WHERE type = 'customer.merged' AND phone_number = :phone_number"
    " AND email IS NOT NULL"
)


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


def read(
    connection: Connection, *, email: str | None, phone_number: str | None
) -> tuple[list[Member], set[str]]:
    """read_clusters(), and which of the two values are the shop's blocked
    values (EMAIL, PHONE_NUMBER). The rows are those the values match, blocked
    or not: the caller reads again without a blocked one (rarely needed)."""
    parameters = {"email": email, "phone_number": phone_number}
    if connection.dialect.name == "sqlite":
        email_blocked, phone_blocked = (
            locks.driver(connection).execute(_SQLITE_BLOCKED, parameters).fetchone()
        )
        rows = read_clusters(connection, email=email, phone_number=phone_number)
    else:
        shape = email is not None, phone_number is not None
        result = connection.execute(_FLAGGED_CLUSTER_QUERIES[shape], parameters).all()
        email_blocked, phone_blocked = result[0][:2]
        rows = [Member(*row[2:]) for row in result if row[2] is not None]
    blocked = {EMAIL} if email_blocked else set()
    if phone_blocked:
        blocked.add(PHONE_NUMBER)
    return rows, blocked


def read_partners(connection: Connection, *, email: str, phone_number: str) -> Partners:
    """The phones the email and the emails the phone were merged with."""
    parameters = {"email": email, "phone_number": phone_number}
    found = connection.execute(_MERGE_PARTNERS, parameters).all()
    return Partners(
        phones_of_email=frozenset(phone for phone, _ in found if phone is not None),
        emails_of_phone=frozenset(mail for _, mail in found if mail is not None),
    )


@dataclass(frozen=True)
class Screened:
    """A request's values once screened, and the rows they match."""

    email: str | None
    phone_number: str | None
    ignored: tuple[Ignored, ...]
    rows: list[Member]


class NothingUsable(Exception):
    """Every value of the request was ignored: nothing can be matched."""

    def __init__(self, ignored: Sequence[Ignored]) -> None:
        super().__init__("every value of the request was ignored")
        self.ignored = list(ignored)


def screen(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    guard: Guard,
    check_email: EmailCheck | None = None,
) -> Screened:
    """Drop the values that are blocked (built-in rules, then the shop's),
    check an email no row holds (every stored email was checked when it was
    stored: the check is the costliest step of parsing), and read the rows
    the remaining values match. Raises NothingUsable when none remains."""
    email, phone_number, ignored = guard.screen(email, phone_number)
    if email is None and phone_number is None:
        raise NothingUsable(ignored)
    rows, blocked = read(connection, email=email, phone_number=phone_number)
    if (
        email is not None
        and check_email is not None
        and EMAIL not in blocked
        and not any(row.email == email for row in rows)
    ):
        checked = check_email(email)
        if checked != email:
            email = checked
            rows, blocked = read(connection, email=email, phone_number=phone_number)
    if blocked:
        ignored += [
            Ignored(field, "blocked")
            for field in (EMAIL, PHONE_NUMBER)
            if field in blocked
        ]
        email = None if EMAIL in blocked else email
        phone_number = None if PHONE_NUMBER in blocked else phone_number
        if email is None and phone_number is None:
            raise NothingUsable(ignored)
        rows = read_clusters(connection, email=email, phone_number=phone_number)
    return Screened(email, phone_number, tuple(ignored), rows)


def _utc(value: str) -> datetime:
    """A timestamp as SQLAlchemy's DateTime stores it on SQLite (UTC, no zone)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def identify(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    request_id: str | None,
    guard: Guard = NO_GUARD,
    check_email: EmailCheck | None = None,
) -> tuple[Decision, Identity, list[Event]]:
    """The customer that owns this email and/or phone number, after inserting
    or relinking contact rows and appending their events as the rules decide,
    with the values `guard` blocks or its limits refuse ignored.

    `connection` must be in autocommit mode, outside any transaction
    (models.py sets every connection up so). A request that writes commits
    before this returns. `check_email`, when given, checks and normalises an
    email that no row holds (see screen()). Raises NothingUsable when every
    value is ignored."""
    version = locks.data_version(connection)
    found = screen(
        connection,
        email=email,
        phone_number=phone_number,
        guard=guard,
        check_email=check_email,
    )
    decision = _decide(found, guard, None, _now())
    if not decision.changes:
        return decision, decision.answer(), []
    found = _begin_writing(connection, found, version, guard=guard)
    partners = None
    if found.email is not None and found.phone_number is not None:
        partners = read_partners(
            connection, email=found.email, phone_number=found.phone_number
        )
    now = _now()
    decision = _decide(found, guard, partners, now)
    if not decision.changes:
        connection.rollback()
        return decision, decision.answer(), []
    identity, events = apply(connection, decision)
    ledger.append_and_commit(connection, events, at=now, request_id=request_id)
    return decision, identity, events


def _decide(
    found: Screened, guard: Guard, partners: Partners | None, now: datetime
) -> Decision:
    return decide(
        found.rows,
        email=found.email,
        phone_number=found.phone_number,
        now=now,
        limits=guard.limits,
        partners=partners,
        ignored=found.ignored,
    )


@dataclass(frozen=True)
class Served:
    identity: Identity
    events: list[Event]
    retries: int
    ignored: tuple[Ignored, ...] = ()


def identify_and_commit(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    request_id: str | None,
    guard: Guard = NO_GUARD,
    check_email: EmailCheck | None = None,
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
            decision, identity, events = identify(
                connection,
                email=email,
                phone_number=phone_number,
                request_id=request_id,
                guard=guard,
                check_email=check_email,
            )
            return Served(identity, events, attempt, decision.ignored)
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
    found: Screened,
    version: int | None,
    *,
    guard: Guard,
) -> Screened:
    """Begin the transaction of a request that writes, make every other writer
    of these identifiers and clusters wait for it, and screen and read afresh:
    what it decides from them stays true until it commits.

    On PostgreSQL a primary it locked may have been merged into another while
    it waited: the fresh read then holds rows of a primary it has not locked.
    It locks those too and reads again, until every row read belongs to a
    primary it holds. Each further round means another merge committed
    meanwhile, and the locked set only grows, so it ends. (README:
    "Concurrency".)

    On SQLite `found` is still fresh, and is kept, when no other connection
    committed since `version` was taken, before it was read."""
    email, phone_number = found.email, found.phone_number
    if connection.dialect.name == "postgresql":
        locked = locks.lock_postgresql(
            connection, email=email, phone_number=phone_number
        )
        while True:
            fresh = screen(
                connection, email=email, phone_number=phone_number, guard=guard
            )
            moved = {row.customer_id for row in fresh.rows} - locked
            if not moved:
                break
            locks.lock_primaries(connection, moved)
            locked |= moved
    else:
        locks.begin_immediate(connection)
        if locks.data_version(connection) == version:
            return found
        fresh = screen(connection, email=email, phone_number=phone_number, guard=guard)
    return replace(fresh, ignored=found.ignored + fresh.ignored)


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
    guard: Guard = NO_GUARD,
    check_email: EmailCheck | None = None,
) -> tuple[list[Identity], tuple[Ignored, ...]]:
    """The customers the email or the phone belongs to (0, 1 or 2), ascending
    primary id, and the values ignored as blocked. Never writes. Raises
    NothingUsable when every value is blocked."""
    found = screen(
        connection,
        email=email,
        phone_number=phone_number,
        guard=guard,
        check_email=check_email,
    )
    return views(found.rows), found.ignored


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
