"""Every read of the service, none of which writes: the rows a request's
values reach (the clusters, with which of the values are blocked or
suppressed), a customer by contact id, the holders of a value, the evidence
a detach needs, and the ledger read back by customer (history) or as one
feed. The write pipeline (writes.py) reads through these too."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Row,
    Select,
    bindparam,
    exists,
    func,
    select,
    text,
    true,
    union,
    union_all,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import InstrumentedAttribute

import guard as guard_rules
import locks
from correct import Evidence
from guard import NO_GUARD, Guard
from ledger import LEDGER_LOCK_KEYS
from models import BlockedValue, Contact, LegacyLink, OneOf, SuppressedValue
from models import Event as EventRow
from reconcile import (
    EMAIL,
    PHONE_NUMBER,
    EventType,
    Identity,
    Ignored,
    Member,
    Partners,
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
# SQLite they are also compiled once, and sent straight to the driver; the
# screening read (flags and rows) is sent straight to PostgreSQL's.
_CLUSTER_QUERIES = {
    (e, p): _cluster_query(by_email=e, by_phone=p) for e, p in locks.SHAPES
}
_SQLITE_CLUSTER_QUERIES = {
    shape: str(query.compile(dialect=sqlite.dialect(paramstyle="named")))
    for shape, query in _CLUSTER_QUERIES.items()
}
_PG_FLAGGED_CLUSTERS = {
    (e, p): locks.postgresql_sql(_flagged_cluster_query(by_email=e, by_phone=p))
    for e, p in locks.SHAPES
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
# identify's fresh reads, run by name in the message that takes its locks.
_PG_FRESH_CLUSTERS = {
    (e, p): locks.Prepared.of(f"identify_read_{e:d}{p:d}", query)
    for (e, p), query in _PG_FLAGGED_CLUSTERS.items()
}
_PG_FRESH_PARTNERS = locks.Prepared.of(
    "identify_partners", locks.postgresql_sql(_MERGE_PARTNERS)
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
    parameters = _screen_parameters(email, phone_number, guard)
    if connection.dialect.name == "sqlite":
        flags = locks.driver(connection).execute(_SQLITE_FLAGS, parameters).fetchone()
        rows = read_clusters(connection, email=email, phone_number=phone_number)
        return rows, _flagged(flags)
    shape = email is not None, phone_number is not None
    (found,) = locks.send(connection, (_PG_FLAGGED_CLUSTERS[shape], parameters))
    return _flagged_rows(found)


def _screen_parameters(
    email: str | None, phone_number: str | None, guard: Guard
) -> dict[str, str | None]:
    return {
        "email": email,
        "phone_number": phone_number,
        "email_digest": guard.digest(EMAIL, email),
        "phone_digest": guard.digest(PHONE_NUMBER, phone_number),
    }


def _flagged_rows(
    result: Sequence[tuple[Any, ...]],
) -> tuple[list[Member], dict[str, str]]:
    """The rows and the flags of the flagged cluster read (PostgreSQL): its
    first four columns are the flags, every row's rest a member (none when
    the values match no row)."""
    rows = [Member(*row[4:]) for row in result if row[4] is not None]
    return rows, _flagged(result[0][:4])


def _flagged(flags: Sequence[bool]) -> dict[str, str]:
    email_blocked, phone_blocked, email_suppressed, phone_suppressed = flags
    blocked = {}
    for field, is_blocked, is_suppressed in (
        (EMAIL, email_blocked, email_suppressed),
        (PHONE_NUMBER, phone_blocked, phone_suppressed),
    ):
        if is_blocked or is_suppressed:
            blocked[field] = "blocked" if is_blocked else "suppressed"
    return blocked


def read_partners(connection: Connection, *, email: str, phone_number: str) -> Partners:
    """The phones the email and the emails the phone were merged with."""
    parameters = {"email": email, "phone_number": phone_number}
    return _partners(connection.execute(_MERGE_PARTNERS, parameters).all())


def _partners(found: Sequence[tuple[Any, ...]]) -> Partners:
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
    """The read step of identify and lookup: which of the values the
    database holds as blocked or suppressed, fed to the screening rule
    (guard.screen, with the built-in rules first, before anything is read),
    and the rows the values it keeps match. An email no row holds is checked
    (every stored email was checked when it was stored: the check is the
    costliest step of parsing). Raises NothingUsable when no value is kept."""
    builtin = guard_rules.screen(email, phone_number, builtin=guard.builtin, flagged={})
    if not builtin.usable:
        raise NothingUsable(builtin.ignored)
    email, phone_number = builtin.email, builtin.phone_number
    rows, flagged = read(
        connection, email=email, phone_number=phone_number, guard=guard
    )
    if (
        email is not None
        and check_email is not None
        and EMAIL not in flagged
        and not any(row.email == email for row in rows)
    ):
        checked = check_email(email)
        if checked != email:
            email = checked
            rows, flagged = read(
                connection, email=email, phone_number=phone_number, guard=guard
            )
    return _screened(
        connection,
        email=email,
        phone_number=phone_number,
        found=(rows, flagged),
        ignored=builtin.ignored,
    )


def _screened(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    found: tuple[list[Member], dict[str, str]],
    ignored: tuple[Ignored, ...],
) -> Screened:
    """The values that the database flags (read()'s `found`) screened out,
    after those already `ignored`, and the rows of those kept: read again
    when a value was dropped. Raises NothingUsable when none is kept."""
    rows, flagged = found
    if not flagged:
        return Screened(email, phone_number, ignored, rows)
    kept = guard_rules.screen(email, phone_number, builtin=False, flagged=flagged)
    ignored += kept.ignored
    if not kept.usable:
        raise NothingUsable(ignored)
    rows = read_clusters(connection, email=kept.email, phone_number=kept.phone_number)
    return Screened(kept.email, kept.phone_number, ignored, rows)


def fresh_screen_statements(
    *, email: str | None, phone_number: str | None, guard: Guard
) -> list[tuple[locks.Prepared, dict[str, str | None]]]:
    """PostgreSQL: the statements that read again what screen() read for
    values it kept and, with both values, their merge partners
    (read_partners()), with their parameters, for a writer to send with the
    statements that take its locks (writes.py); fresh_screened() takes their
    results."""
    shape = email is not None, phone_number is not None
    statements = [
        (_PG_FRESH_CLUSTERS[shape], _screen_parameters(email, phone_number, guard))
    ]
    if email is not None and phone_number is not None:
        partners: dict[str, str | None] = {"email": email, "phone_number": phone_number}
        statements.append((_PG_FRESH_PARTNERS, partners))
    return statements


def fresh_screened(
    connection: Connection,
    results: Sequence[locks.Rows],
    *,
    email: str | None,
    phone_number: str | None,
) -> tuple[Screened, Partners | None]:
    """The rows each of fresh_screen_statements() read: the values
    screened again (those the database flags now are `ignored`) and their
    rows, and the merge partners of the two values when both are still kept
    (else None)."""
    rows, *partners = results
    screened = _screened(
        connection,
        email=email,
        phone_number=phone_number,
        found=_flagged_rows(rows),
        ignored=(),
    )
    if screened.email is None or screened.phone_number is None:
        return screened, None
    return screened, _partners(partners[0])


def _utc(value: str) -> datetime:
    """A timestamp as SQLAlchemy's DateTime stores it on SQLite (UTC, no zone)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


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


def customer_query(
    *extra: ColumnElement[Any] | InstrumentedAttribute[Any],
) -> Select[*tuple[Any, ...]]:
    """The live rows of the customer that live contact :contact_id belongs
    to, ascending id: a member's columns, then `extra`."""
    return (
        select(*_COLUMNS, *extra)
        .where(
            _LIVE,
            (Contact.id == _CUSTOMER_OF) | (Contact.linked_id == _CUSTOMER_OF),
        )
        .order_by(Contact.id)
    )


_CUSTOMER = customer_query()


def customer_rows(connection: Connection, contact_id: int) -> list[Member]:
    """The live rows of the customer that live contact `contact_id` belongs
    to, ascending id; none when no live contact has that id."""
    rows = connection.execute(_CUSTOMER, {"contact_id": contact_id})
    return [Member(*row) for row in rows]


def customer(connection: Connection, contact_id: int) -> Identity | None:
    """The customer that live contact `contact_id` belongs to, or None."""
    found = views(customer_rows(connection, contact_id))
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


def read_retired(connection: Connection, rows: Sequence[Member]) -> list[Member]:
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


@dataclass(frozen=True)
class CustomerRows:
    """What a correction's rule decides from: the customer's live rows,
    ascending id, its soft-deleted ones, and what joins them (when read)."""

    rows: list[Member]
    retired: list[Member]
    evidence: Evidence


def read_customer(
    connection: Connection, contact_id: int, *, evidence: bool
) -> CustomerRows | None:
    """The read step of a correction: the rows of the customer that live
    contact `contact_id` belongs to, its retired rows and, with `evidence`,
    the evidence that joins them; None when no live contact has that id."""
    rows = customer_rows(connection, contact_id)
    if not rows:
        return None
    retired = read_retired(connection, rows)
    found = read_evidence(connection, rows) if evidence else Evidence()
    return CustomerRows(rows, retired, found)


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next: int | None


_EVENT_COLUMNS = tuple(EventRow.__table__.columns)


# PostgreSQL: the highest event id once no id is in flight (feed()). The
# lock is transaction-scoped and the statement its own transaction, so it is
# released as soon as the statement ends.
_PG_HORIZON = text(
    f"SELECT pg_advisory_xact_lock({LEDGER_LOCK_KEYS}), max(id) FROM event"
)


def horizon(connection: Connection) -> int:
    """The highest event id below which no id is still in flight (0 for an
    empty ledger): every event committed from now on has a greater id. On
    PostgreSQL, read as feed() reads it; `connection` in autocommit mode."""
    if connection.dialect.name == "postgresql":
        return int(connection.execute(_PG_HORIZON).one()[1] or 0)
    return int(connection.execute(select(func.max(EventRow.id))).scalar() or 0)


def feed(
    connection: Connection,
    *,
    after: int,
    limit: int,
    types: Sequence[str] | None = None,
) -> Page:
    """Every event with an id above `after` (of one of `types`, when given),
    oldest first, up to the newest
    event below which no id is still in flight: an event that shows up later
    always has a greater id than every event shown before. `connection`
    must be in autocommit mode, outside any transaction (models.py sets
    every connection up so): on PostgreSQL a transaction would keep every
    writer waiting for the ledger lock until it ended.

    On PostgreSQL the horizon comes first: the highest event id, read by a
    statement that takes the ledger lock exclusively, so it waits for the
    writers holding the lock to end (writers arriving meanwhile wait behind
    it). Its snapshot is taken before that wait, and every id up to the
    highest it sees was drawn before the lock was granted, under the shared
    lock, by a transaction that had therefore ended when it was. The page is
    read by a second statement, whose newer snapshot holds every one of
    those that committed, and stops at the horizon: ids drawn later may
    still be in flight (docs/guarantees.md: "The feed on PostgreSQL")."""
    bounds = [EventRow.id > after]
    if connection.dialect.name == "postgresql":
        horizon = connection.execute(_PG_HORIZON).one()[1]
        if horizon is None or horizon <= after:
            return Page([], None)
        bounds.append(EventRow.id <= horizon)
    if types is None:
        query = select(*_EVENT_COLUMNS).where(*bounds)
        return _page(
            connection.execute(query.order_by(EventRow.id).limit(limit + 1)).all(),
            limit,
        )
    # A page of each type, read from ix_event_id_type in id order (the type
    # checked in the index, not in the table), then merged: one IN over the
    # types would read every matching event after `after`, to sort them.
    pages = [
        select(*_EVENT_COLUMNS)
        .where(EventRow.type == kind, *bounds)
        .order_by(EventRow.id)
        .limit(limit + 1)
        .subquery()
        for kind in types
    ]
    merged = union_all(*(select(*page.c) for page in pages)).subquery()
    query = select(*merged.c).order_by(merged.c.id).limit(limit + 1)
    return _page(connection.execute(query).all(), limit)


# The customer's history, in one statement (docs/decisions.md):
# - members: its rows, live or soft-deleted; their ids are the customer ids
#   whose events it lists, and the values its live rows hold are the only
#   values it shows (any other is null);
# - handovers: the customer ids it took over from (primary_changed: all
#   their events up to the hand-over) or was split from (split: only those
#   of their events that name one of its rows);
# - of its own ids' events, those that name only rows living in another
#   customer (a part split off since) are left out.
# {elements} reads a JSON array of contact ids as rows (one function name per
# engine); every subquery reads the customer's rows or one event's ids, so
# the cost is the customer's size, whatever the size of the table.
_HISTORY_SQL = """
    WITH root AS (
        SELECT coalesce(linked_id, id) AS id FROM contact
        WHERE id = :contact_id AND deleted_at IS NULL
    ),
    members AS (
        SELECT contact.id, contact.email, contact.phone_number, contact.deleted_at
        FROM contact JOIN root ON contact.id = root.id
        UNION SELECT contact.id, contact.email, contact.phone_number,
        contact.deleted_at
        FROM contact JOIN root ON contact.linked_id = root.id
    ),
    handovers AS (
        SELECT type, previous_customer_id AS id, max(id) AS last FROM event
        WHERE type IN ('customer.primary_changed', 'customer.split')
        AND customer_id IN (SELECT id FROM members)
        GROUP BY type, previous_customer_id
    ),
    found AS (
        SELECT id, contact_ids, 1 AS whole FROM event
        WHERE customer_id IN (SELECT id FROM members) AND id > :after{types}
        UNION ALL SELECT event.id, event.contact_ids,
        CASE WHEN handovers.type = 'customer.primary_changed' THEN 1 ELSE 0 END
        FROM event JOIN handovers
        ON event.customer_id = handovers.id AND event.id <= handovers.last
        WHERE event.id > :after{types}
    ),
    listed AS (
        SELECT DISTINCT id FROM found
        WHERE EXISTS (
            SELECT 1 FROM {elements}(found.contact_ids) AS named
            WHERE (
                SELECT coalesce(linked_id, id) FROM contact
                WHERE id = CAST(named.value AS INTEGER)
            ) = (SELECT id FROM root)
        )
        OR (found.whole = 1 AND NOT EXISTS (
            SELECT 1 FROM {elements}(found.contact_ids) AS named
            WHERE (
                SELECT coalesce(linked_id, id) FROM contact
                WHERE id = CAST(named.value AS INTEGER) AND deleted_at IS NULL
            ) <> (SELECT id FROM root)
        ))
        ORDER BY id LIMIT :limit
    )
    SELECT event.id, type, at, request_id, customer_id, contact_ids,
    absorbed_customer_id, previous_customer_id,
    CASE WHEN email IN (
        SELECT email FROM members WHERE deleted_at IS NULL
    ) THEN email END AS email,
    CASE WHEN phone_number IN (
        SELECT phone_number FROM members WHERE deleted_at IS NULL
    ) THEN phone_number END AS phone_number,
    reason, limit_name
    FROM event JOIN listed ON event.id = listed.id
    ORDER BY event.id
"""
# One statement per engine and per whether `types=` filters the events.
_HISTORY = {
    (dialect, filtered): text(
        _HISTORY_SQL.format(
            elements=elements, types=" AND event.type IN :types" if filtered else ""
        )
    )
    .bindparams(*([bindparam("types", expanding=True)] if filtered else []))
    .columns(*_EVENT_COLUMNS)
    for dialect, elements in (
        ("sqlite", "json_each"),
        ("postgresql", "json_array_elements_text"),
    )
    for filtered in (False, True)
}
_LIVE_CONTACT = select(Contact.id).where(
    Contact.id == bindparam("contact_id"), Contact.deleted_at.is_(None)
)


def history(
    connection: Connection,
    contact_id: int,
    *,
    after: int,
    limit: int,
    types: Sequence[str] | None = None,
) -> Page | None:
    """The events of the customer that live contact `contact_id` belongs to,
    oldest first; None when no live contact has that id. They are the events
    of every contact id the customer has had: its primary's, those of the
    customers it absorbed (now its rows, live or soft-deleted), and that of
    the customer it came from up to the hand-over (a soft-deleted primary it
    took over from, `customer.primary_changed`: all of them; one it was split
    from, `customer.split`: those that name one of its rows; one step back).
    Of its own ids' events, those that name only rows of another customer
    (split off since) are left out. An email or phone that no live row of
    the customer holds is shown as null (docs/decisions.md). With `types`,
    only the events of those types."""
    parameters: dict[str, Any] = {
        "contact_id": contact_id,
        "after": after,
        "limit": limit + 1,
    }
    if types is not None:
        parameters["types"] = list(types)
    query = _HISTORY[connection.dialect.name, types is not None]
    page = _page(connection.execute(query, parameters).all(), limit)
    if page.events or connection.execute(_LIVE_CONTACT, parameters).first():
        return page
    return None


def _page(rows: Sequence[Row[Any]], limit: int) -> Page:
    more = len(rows) > limit
    events = [event_json(row) for row in rows[:limit]]
    return Page(events, events[-1]["id"] if more else None)


def event_json(row: Row[Any]) -> dict[str, Any]:
    """An event as the API shows it; the extra member of its type only."""
    answer: dict[str, Any] = {
        "id": row.id,
        "type": row.type,
        "at": row.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "requestId": row.request_id,
        "customerId": row.customer_id,
        "contactIds": row.contact_ids,
    }
    for key, value in (
        ("absorbedCustomerId", row.absorbed_customer_id),
        ("previousCustomerId", row.previous_customer_id),
        ("reason", row.reason),
        ("limit", row.limit_name),
    ):
        if value is not None:
            answer[key] = value
    answer["email"] = row.email
    answer["phoneNumber"] = row.phone_number
    return answer
