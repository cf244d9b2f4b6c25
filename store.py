"""The apply step of writes.py: the statements, per engine, that write what
a rule decided (a Batch of identify's, a Correction) into the caller's
transaction. Nothing here reads to decide, takes a lock or commits."""

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    union,
    update,
)

import locks
from correct import Correction
from ledger import SQLITE_DATETIME
from models import Contact, LegacyLink, OneOf
from models import Event as EventRow
from reconcile import (
    EMAIL,
    NEW_ROW,
    PHONE_NUMBER,
    PRIMARY,
    SECONDARY,
    Batch,
    EventType,
    NewRow,
    is_placeholder,
    placeholder,
)

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
_LINK_ONE = (
    update(Contact)
    .where(Contact.id == bindparam("row_id"))
    .values(
        linked_id=bindparam("primary_id"),
        link_precedence=SECONDARY,
        updated_at=bindparam("now"),
    )
)
_INSERT = insert(Contact).returning(Contact.id)
# PostgreSQL: one new row (a request's), sent straight to the driver.
_PG_INSERT_ONE = (
    "INSERT INTO contact (email, phone_number, linked_id, link_precedence,"
    " created_at, updated_at) VALUES (%(email)s, %(phone_number)s, %(linked_id)s,"
    " %(link_precedence)s, %(created_at)s, %(updated_at)s) RETURNING id"
)
_NEW_COLUMNS = (
    "id, email, phone_number, linked_id, link_precedence, created_at, updated_at"
)
# Several rows: their ids are drawn first (_reserve), then they go in at once
# with those ids, so that rows and events can name each other.
_SQLITE_RESERVE = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'contact'),"
    " 0), coalesce((SELECT max(id) FROM contact), 0))"
)
_SQLITE_INSERT_MANY = (
    f"INSERT INTO contact ({_NEW_COLUMNS}) VALUES (:id, :email, :phone_number,"
    " :linked_id, :link_precedence, :created_at, :created_at)"
)
_PG_RESERVE = text(
    "SELECT nextval(pg_get_serial_sequence('contact', 'id'))"
    " FROM generate_series(1, :count)"
)
_PG_INSERT_MANY = text(
    f"INSERT INTO contact ({_NEW_COLUMNS})"
    " SELECT id, email, phone_number, linked_id, link_precedence, created_at,"
    " created_at FROM unnest(CAST(:id AS int[]), CAST(:email AS varchar[]),"
    " CAST(:phone_number AS varchar[]), CAST(:linked_id AS int[]),"
    " CAST(:link_precedence AS varchar[]), CAST(:created_at AS timestamptz[]))"
    " AS new (id, email, phone_number, linked_id, link_precedence, created_at)"
)


def apply_batch(
    connection: Connection, batch: Batch, *, now: datetime
) -> dict[int, int]:
    """Write the batch's contact rows in the caller's transaction; return the
    real id of each row inserted, by placeholder. One row goes in with
    INSERT ... RETURNING; several take their ids first (one statement) and go
    in by one statement (PostgreSQL: arrays through unnest) or one driver
    executemany (SQLite). Rows are promoted, then relinked."""
    ids = _insert(connection, batch.new)

    def real(row_id: int) -> int:
        return ids[row_id] if is_placeholder(row_id) else row_id

    _each(
        connection,
        _PROMOTE,
        [{"row_id": real(row), "now": now} for row in batch.promote],
    )
    groups: dict[int, list[int]] = {}
    for row_id, primary_id in batch.relink:
        groups.setdefault(real(primary_id), []).append(real(row_id))
    if len(groups) == 1:
        ((primary_id, row_ids),) = groups.items()
        connection.execute(
            _LINK, {"row_ids": row_ids, "primary_id": primary_id, "now": now}
        )
    elif groups:
        connection.execute(
            _LINK_ONE,
            [
                {"row_id": row_id, "primary_id": primary_id, "now": now}
                for primary_id, row_ids in groups.items()
                for row_id in row_ids
            ],
        )
    return ids


def _each(
    connection: Connection, statement: Any, parameters: list[dict[str, Any]]
) -> None:
    """`statement` once per set of parameters: one execute, or one executemany."""
    if len(parameters) == 1:
        connection.execute(statement, parameters[0])
    elif parameters:
        connection.execute(statement, parameters)


def _insert(connection: Connection, rows: Sequence[NewRow]) -> dict[int, int]:
    if not rows:
        return {}
    if len(rows) == 1:
        if connection.dialect.name == "postgresql":
            (inserted,) = locks.send(connection, (_PG_INSERT_ONE, _values(rows[0])))
            ((row_id,),) = inserted
            return {NEW_ROW: row_id}
        return {NEW_ROW: connection.execute(_INSERT, _values(rows[0])).scalar_one()}
    reserved = _reserve(connection, len(rows))
    ids = {placeholder(position): row_id for position, row_id in enumerate(reserved)}
    values = [
        {
            "id": ids[placeholder(position)],
            **_values(row, ids),
        }
        for position, row in enumerate(rows)
    ]
    if connection.dialect.name == "sqlite":
        for row in values:
            row["created_at"] = (
                row["created_at"].astimezone(UTC).strftime(SQLITE_DATETIME)
            )
        locks.driver(connection).executemany(_SQLITE_INSERT_MANY, values)
    else:
        columns = (
            "id",
            "email",
            "phone_number",
            "linked_id",
            "link_precedence",
            "created_at",
        )
        connection.execute(
            _PG_INSERT_MANY, {name: [row[name] for row in values] for name in columns}
        )
    return ids


def _reserve(connection: Connection, count: int) -> list[int]:
    """`count` new contact ids, ascending. SQLite: those after the highest
    ever given (AUTOINCREMENT), safe under its one write lock, which the
    caller holds; PostgreSQL: drawn from the table's sequence."""
    if connection.dialect.name == "sqlite":
        (highest,) = locks.driver(connection).execute(_SQLITE_RESERVE).fetchone()
        return list(range(highest + 1, highest + 1 + count))
    return sorted(connection.execute(_PG_RESERVE, {"count": count}).scalars())


def _values(row: NewRow, ids: dict[int, int] | None = None) -> dict[str, Any]:
    linked_id = row.linked_id
    if linked_id is not None and is_placeholder(linked_id):
        linked_id = (ids or {})[linked_id]
    return {
        "email": row.email,
        "phone_number": row.phone_number,
        "linked_id": linked_id,
        "link_precedence": PRIMARY if linked_id is None else SECONDARY,
        "created_at": row.created_at,
        "updated_at": row.created_at,
    }


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
# to the hand-over (one step back, as a history goes: reads.history).
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


def apply_correction(
    connection: Connection, correction: Correction, *, now: datetime
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
