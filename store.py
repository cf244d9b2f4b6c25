"""Reading the rows the rules need and applying their decisions: the contact
rows and their ledger events, in one transaction, under the locks of locks.py.

A request that changes nothing is answered from one read, in no transaction.
A request that writes begins its transaction, takes its locks, reads again
and decides again from what it now holds (reconcile.decide), then writes."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Select,
    Update,
    bindparam,
    delete,
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

import correct
import guard as guard_rules
import ledger
import locks
import purge
from correct import Correction, Evidence
from guard import NO_GUARD, Guard
from locks import LostRace
from models import BlockedValue, Contact, LegacyLink, OneOf, SuppressedValue
from models import Event as EventRow
from reconcile import (
    EMAIL,
    PHONE_NUMBER,
    PRIMARY,
    SECONDARY,
    Decision,
    Event,
    EventType,
    Identity,
    Ignored,
    Member,
    Partners,
    decide,
    views,
)

T = TypeVar("T")

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
    """PostgreSQL: whether the email and the phone are blocked or suppressed
    values, and the cluster rows, in one statement: a row of flags,
    left-joined to the rows."""
    flags = select(
        exists().where(BlockedValue.email == bindparam("email")),
        exists().where(BlockedValue.phone_number == bindparam("phone_number")),
        exists().where(SuppressedValue.digest == bindparam("email_digest")),
        exists().where(SuppressedValue.digest == bindparam("phone_digest")),
    ).subquery("flags")
    cluster = _cluster_union(by_email=by_email, by_phone=by_phone).subquery("cluster")
    return (
        select(*flags.c, *cluster.c)
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
_SQLITE_FLAGS = (
    "SELECT EXISTS (SELECT 1 FROM blocked_value WHERE email = :email),"
    " EXISTS (SELECT 1 FROM blocked_value WHERE phone_number = :phone_number),"
    " EXISTS (SELECT 1 FROM suppressed_value WHERE digest = :email_digest),"
    " EXISTS (SELECT 1 FROM suppressed_value WHERE digest = :phone_digest)"
)
# Each half reads one value's merge index only (models.MERGED_WITH): a
# condition on the other column let PostgreSQL scan that column's index whole
# when its statistics were old (every merge event, on every write).
_MERGE_PARTNERS = text(
    "SELECT phone_number, NULL FROM event"
    " WHERE type = 'customer.merged' AND email = :email"
    " UNION SELECT NULL, email FROM event"
    " WHERE type = 'customer.merged' AND phone_number = :phone_number"
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
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    guard: Guard,
) -> tuple[list[Member], dict[str, str]]:
    """read_clusters(), and which of the two values (EMAIL, PHONE_NUMBER) are
    the shop's blocked values or suppressed ones, with that reason. The rows
    are those the values match, blocked or not: the caller reads again
    without a blocked one (rarely needed)."""
    parameters = {
        "email": email,
        "phone_number": phone_number,
        "email_digest": guard.digest(EMAIL, email),
        "phone_digest": guard.digest(PHONE_NUMBER, phone_number),
    }
    if connection.dialect.name == "sqlite":
        flags = locks.driver(connection).execute(_SQLITE_FLAGS, parameters).fetchone()
        rows = read_clusters(connection, email=email, phone_number=phone_number)
    else:
        shape = email is not None, phone_number is not None
        result = connection.execute(_FLAGGED_CLUSTER_QUERIES[shape], parameters).all()
        flags = result[0][:4]
        rows = [Member(*row[4:]) for row in result if row[4] is not None]
    email_blocked, phone_blocked, email_suppressed, phone_suppressed = flags
    blocked = {}
    for field, is_blocked, is_suppressed in (
        (EMAIL, email_blocked, email_suppressed),
        (PHONE_NUMBER, phone_blocked, phone_suppressed),
    ):
        if is_blocked or is_suppressed:
            blocked[field] = "blocked" if is_blocked else "suppressed"
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
    """Drop the values that are blocked (built-in rules, then the shop's) or
    suppressed, check an email no row holds (every stored email was checked
    when it was stored: the check is the costliest step of parsing), and
    read the rows the remaining values match. Raises NothingUsable when none
    remains."""
    email, phone_number, ignored = guard.screen(email, phone_number)
    if email is None and phone_number is None:
        raise NothingUsable(ignored)
    rows, blocked = read(
        connection, email=email, phone_number=phone_number, guard=guard
    )
    if (
        email is not None
        and check_email is not None
        and EMAIL not in blocked
        and not any(row.email == email for row in rows)
    ):
        checked = check_email(email)
        if checked != email:
            email = checked
            rows, blocked = read(
                connection, email=email, phone_number=phone_number, guard=guard
            )
    if blocked:
        ignored += [
            Ignored(field, blocked[field])
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

    def attempt() -> tuple[Decision, Identity, list[Event]]:
        return identify(
            connection,
            email=email,
            phone_number=phone_number,
            request_id=request_id,
            guard=guard,
            check_email=check_email,
        )

    (decision, identity, events), retries = retrying(connection, attempt, attempts)
    return Served(identity, events, retries, decision.ignored)


def retrying(
    connection: Connection, work: Callable[[], T], attempts: int = 3
) -> tuple[T, int]:
    """`work()` and how many retries it took: the whole transaction again
    after a lost race (identify_and_commit), and once after a dropped pooled
    connection. Raises LostRace; rolls back on any error."""
    for attempt in range(attempts):
        try:
            return work(), attempt
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

    On PostgreSQL a primary it locked may have been merged into another, or
    its customer split or erased, while it waited: the fresh read then holds
    rows of primaries other than those it locked. It locks those instead
    (locks.relock_primaries: keeping a lock on a row that is now another
    customer's secondary could deadlock with that customer's writer) and
    reads again, until the primaries of the rows read are exactly those it
    holds. Each further round means another writer changed these customers
    and committed meanwhile. (README: "Concurrency".)

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
            customers = {row.customer_id for row in fresh.rows}
            if customers == locked:
                break
            locked = locks.relock_primaries(connection, customers)
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
    .where(OneOf(Contact.id, "row_ids"))
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


def holders(connection: Connection, *, field: str, value: str) -> list[Identity]:
    """Every customer that a live row holding the email or phone (`field`:
    EMAIL or PHONE_NUMBER) belongs to, ascending primary id, whether the value
    is blocked or not: the customers a support person detaches it from.
    Never writes."""
    email = value if field == EMAIL else None
    phone_number = value if field == PHONE_NUMBER else None
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


_RETIRED = select(*_COLUMNS).where(
    Contact.deleted_at.is_not(None),
    OneOf(Contact.id, "ids") | OneOf(Contact.linked_id, "ids"),
)
_MERGED_PAIRS = (
    select(EventRow.email, EventRow.phone_number)
    .where(
        EventRow.type == EventType.MERGED.value,
        OneOf(EventRow.email, "emails"),
        OneOf(EventRow.phone_number, "phones"),
    )
    .distinct()
)
_LEGACY_LINKS = select(LegacyLink.contact_id, LegacyLink.customer_id).where(
    OneOf(LegacyLink.contact_id, "ids")
)


def read_evidence(connection: Connection, rows: Sequence[Member]) -> Evidence:
    """The merge events whose two values the rows hold, and the rows' legacy
    links."""
    emails = sorted({row.email for row in rows if row.email is not None})
    phones = sorted({row.phone_number for row in rows if row.phone_number})
    merged: frozenset[tuple[str, str]] = frozenset()
    if emails and phones:
        found = connection.execute(_MERGED_PAIRS, {"emails": emails, "phones": phones})
        merged = frozenset((email, phone) for email, phone in found if email and phone)
    legacy = connection.execute(_LEGACY_LINKS, {"ids": [row.id for row in rows]})
    return Evidence(merged, frozenset((contact, linked) for contact, linked in legacy))


def _read_retired(connection: Connection, rows: Sequence[Member]) -> list[Member]:
    """The soft-deleted rows linked to the customer's rows, directly or through
    each other, and its primary if that was soft-deleted."""
    seen = {row.id for row in rows}
    frontier = seen | {rows[0].customer_id}
    retired: list[Member] = []
    while frontier:
        found = connection.execute(_RETIRED, {"ids": sorted(frontier)})
        new = [Member(*row) for row in found if row.id not in seen]
        retired += new
        frontier = {row.id for row in new}
        seen |= frontier
    return retired


# Decides a correction from the customer's live and soft-deleted rows.
CorrectionRule = Callable[[Connection, list[Member], list[Member]], Correction]


def detach_and_commit(
    connection: Connection,
    contact_id: int,
    *,
    field: str,
    value: str,
    request_id: str | None,
    block: bool = False,
    dry_run: bool = False,
    reason: str | None = None,
) -> tuple[Correction | None, int]:
    """Take `value` away from the customer of live contact `contact_id`
    (correct.detach), blocking it with `block`; its events carry `reason`.
    Raises correct.NotHeld."""

    def rule(
        connection: Connection, rows: list[Member], retired: list[Member]
    ) -> Correction:
        evidence = read_evidence(connection, rows)
        return correct.detach(
            rows,
            retired,
            field=field,
            value=value,
            evidence=evidence,
            reason=reason,
        )

    return correct_and_commit(
        connection,
        contact_id,
        rule,
        request_id=request_id,
        block=block,
        dry_run=dry_run,
    )


def erase_and_commit(
    connection: Connection,
    contact_id: int,
    *,
    request_id: str | None,
    guard: Guard,
    suppress: bool = False,
    dry_run: bool = False,
    reason: str | None = None,
) -> tuple[Correction | None, int, str | None]:
    """Erase the customer of live contact `contact_id` (correct.erase),
    suppressing its values with `suppress` (the caller checks that `guard`
    has the key); its event carries `reason`. Then remove what is left of
    its values in the database's files where that can be done at once
    (purge.after_erase). Returns the correction, the retries it took, and
    where copies of the values remain and why (None when none do, or when
    nothing was erased)."""

    def rule(_: Connection, rows: list[Member], retired: list[Member]) -> Correction:
        return correct.erase(rows, retired, reason=reason)

    done, retries = correct_and_commit(
        connection,
        contact_id,
        rule,
        request_id=request_id,
        guard=guard,
        suppress=suppress,
        dry_run=dry_run,
    )
    if done is None or dry_run:
        return done, retries, None
    return done, retries, purge.after_erase(connection)


def correct_and_commit(
    connection: Connection,
    contact_id: int,
    rule: CorrectionRule,
    *,
    request_id: str | None,
    guard: Guard = NO_GUARD,
    block: bool = False,
    suppress: bool = False,
    dry_run: bool = False,
) -> tuple[Correction | None, int]:
    """Lock the customer that live contact `contact_id` belongs to as
    identify does, read its rows, decide with `rule` and apply the decision
    with its events in one transaction (with `dry_run`, roll it back). With
    `block`, the values it forgets become blocked values; with `suppress`,
    their keyed hashes are stored (guard.digest). Returns the correction
    (None when no live contact has that id) and the retries it took. Raises
    what `rule` raises, and LostRace."""

    def attempt() -> Correction | None:
        if connection.dialect.name == "postgresql":
            locks.lock_customer_postgresql(connection, contact_id)
        else:
            locks.begin_immediate(connection)
        rows = [
            Member(*row)
            for row in connection.execute(_CUSTOMER, {"contact_id": contact_id})
        ]
        if not rows:
            connection.rollback()
            return None
        correction = rule(connection, rows, _read_retired(connection, rows))
        if dry_run:
            connection.rollback()
            return correction
        now = _now()
        _apply_correction(connection, correction, now)
        for field, value in correction.forgotten if block else ():
            guard_rules.block_within(connection, field, value, now=now)
        if suppress:
            digests = [
                guard.digest(field, value) for field, value in correction.forgotten
            ]
            guard_rules.suppress_within(
                connection, guard, [digest for digest in digests if digest], now=now
            )
        ledger.append_and_commit(
            connection, correction.events, at=now, request_id=request_id
        )
        return correction

    return retrying(connection, attempt)


_DELETE_ROWS = delete(Contact).where(OneOf(Contact.id, "row_ids"))
_DELETE_LEGACY = delete(LegacyLink).where(OneOf(LegacyLink.contact_id, "row_ids"))
_VALUE_COLUMNS = {EMAIL: Contact.email, PHONE_NUMBER: Contact.phone_number}


@cache
def _change_rows(field: str | None, link: str) -> Update:
    """UPDATE of the rows whose `field` becomes null (None: no value changes)
    and whose link becomes :primary_id (`link` SECONDARY), none (PRIMARY), or
    stays ("kept"): one statement per kind of change a correction makes."""
    values: dict[Any, Any] = {Contact.updated_at: bindparam("now")}
    if field is not None:
        values[_VALUE_COLUMNS[field]] = None
    if link == PRIMARY:
        values[Contact.linked_id] = None
    elif link == SECONDARY:
        values[Contact.linked_id] = bindparam("primary_id")
    if link != "kept":
        values[Contact.link_precedence] = link
    return update(Contact).where(OneOf(Contact.id, "row_ids")).values(values)


_FORGET = {
    field: update(EventRow).where(OneOf(column, "values")).values({column: None})
    for field, column in (
        (EMAIL, EventRow.email),
        (PHONE_NUMBER, EventRow.phone_number),
    )
}


# The events a detach appends, which carry the reason support gave.
_CORRECTED = (
    EventType.DETACHED.value,
    EventType.SPLIT.value,
    EventType.PRIMARY_CHANGED.value,
)
_HANDOVERS = (
    select(
        EventRow.previous_customer_id.label("id"), func.max(EventRow.id).label("last")
    )
    .where(
        OneOf(EventRow.customer_id, "ids"),
        EventRow.type.in_([EventType.SPLIT.value, EventType.PRIMARY_CHANGED.value]),
    )
    .group_by(EventRow.previous_customer_id)
    .cte("handovers")
)
_WITH_REASON = EventRow.reason.is_not(None) & EventRow.type.in_(_CORRECTED)
_REASONED = union(
    select(EventRow.id, EventRow.at).where(
        _WITH_REASON, OneOf(EventRow.customer_id, "ids")
    ),
    select(EventRow.id, EventRow.at)
    .join(
        _HANDOVERS,
        (EventRow.customer_id == _HANDOVERS.c.id) & (EventRow.id <= _HANDOVERS.c.last),
    )
    .where(_WITH_REASON),
).subquery()
# One event of each detach, with a reason, that the customers took part in:
# as themselves, or as the customer they were split or handed over from, up
# to the hand-over (one step back, as a history goes: ledger.history).
_REASONED_DETACHES = select(func.min(_REASONED.c.id)).group_by(_REASONED.c.at)
# A detach's events are the run of consecutive ids around one of them that
# share its `at`: one transaction appends them at once, under the ledger's
# lock (ledger.py), and two transactions never take the same microsecond.
# Aliases, so that the UPDATE below does not correlate them with its rows.
_ONE, _NEAR = EventRow.__table__.alias("one"), EventRow.__table__.alias("near")
_AT = select(_ONE.c.at).where(_ONE.c.id == bindparam("event_id")).scalar_subquery()
_BEFORE = (
    select(_NEAR.c.id)
    .where(_NEAR.c.id < bindparam("event_id"), _NEAR.c.at != _AT)
    .order_by(_NEAR.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_AFTER = (
    select(_NEAR.c.id)
    .where(_NEAR.c.id > bindparam("event_id"), _NEAR.c.at != _AT)
    .order_by(_NEAR.c.id)
    .limit(1)
    .scalar_subquery()
)
_FORGET_REASONS = (
    update(EventRow)
    .where(
        EventRow.id > func.coalesce(_BEFORE, 0),
        # Event ids are 32-bit integers: 2**31 is above every one of them.
        EventRow.id < func.coalesce(_AFTER, 2**31),
        _WITH_REASON,
    )
    .values(reason=None)
)


def _forget_reasons(connection: Connection, contact_ids: Sequence[int]) -> None:
    """Null the support reason on every event of every detach that these
    contact ids took part in (correct.Correction.reasons_forgotten), in the
    caller's transaction."""
    found = connection.execute(_REASONED_DETACHES, {"ids": list(contact_ids)})
    for (event_id,) in found.all():
        connection.execute(_FORGET_REASONS, {"event_id": event_id})


def _apply_correction(
    connection: Connection, correction: Correction, now: datetime
) -> None:
    """Write a correction's contact rows and null its forgotten values and
    reasons in the ledger, in the caller's transaction. Links change before
    rows go, so no row is left linked to a deleted one."""
    changes: dict[tuple[bool, int | None | str], list[int]] = {}
    links = dict(correction.links)
    cleared = set(correction.cleared)
    for row_id in cleared | set(links):
        target = links.get(row_id, "kept")
        changes.setdefault((row_id in cleared, target), []).append(row_id)
    for (clear, target), row_ids in changes.items():
        field = correction.field if clear else None
        link = "kept" if target == "kept" else PRIMARY if target is None else SECONDARY
        connection.execute(
            _change_rows(field, link),
            {"row_ids": sorted(row_ids), "now": now, "primary_id": target},
        )
    if correction.deleted:
        deleted = {"row_ids": list(correction.deleted)}
        connection.execute(_DELETE_LEGACY, deleted)
        connection.execute(_DELETE_ROWS, deleted)
    for field, forget in _FORGET.items():
        values = [value for kind, value in correction.forgotten if kind == field]
        if values:
            connection.execute(forget, {"values": values})
    if correction.reasons_forgotten:
        _forget_reasons(connection, correction.reasons_forgotten)
