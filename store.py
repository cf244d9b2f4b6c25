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
    Connection,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    union,
    update,
)
from sqlalchemy.exc import DBAPIError

import correct
import guard as guard_rules
import ledger
import locks
import purge
import reads
from correct import Correction
from guard import NO_GUARD, Guard
from locks import LostRace
from models import Contact, LegacyLink, OneOf
from models import Event as EventRow
from reads import EmailCheck, Screened
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
)

T = TypeVar("T")


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
    email that no row holds (see reads.screen()). Raises NothingUsable when every
    value is ignored."""
    version = locks.data_version(connection)
    found = reads.screen(
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
        partners = reads.read_partners(
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
            fresh = reads.screen(
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
        fresh = reads.screen(
            connection, email=email, phone_number=phone_number, guard=guard
        )
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
        evidence = reads.read_evidence(connection, rows)
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


# Decides a correction from the customer's live and soft-deleted rows.
CorrectionRule = Callable[[Connection, list[Member], list[Member]], Correction]


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
        rows = reads.customer_rows(connection, contact_id)
        if not rows:
            connection.rollback()
            return None
        correction = rule(connection, rows, reads.read_retired(connection, rows))
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
