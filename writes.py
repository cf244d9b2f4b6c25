"""The write pipeline: the one way contact rows and ledger events change,
with the blocked and suppressed values a correction adds (docs/development.md:
"The write pipeline"; the shop's list of blocked values is edited by guard.py).
Every writer runs the same steps, in one transaction, retried whole after a
lost race:

1. lock: take the locks of the values (identify) or of the customer
   (detach, erase), locks.py; this begins the transaction;
2. read: what they touch, reads.py (rows, blocked and suppressed flags,
   merge partners, a customer's retired rows and evidence);
3. decide: a pure rule from what was read to a decision, no connection
   (reconcile.decide, correct.detach, correct.erase; guard.screen screens
   the values in the read step);
4. apply: the decision's statements, store.py (apply_batch,
   apply_correction), and the blocked or suppressed values it adds;
5. append and commit: its events, then COMMIT, in _append_and_commit, the
   single commit point (PostgreSQL: the ledger lock, the insert and COMMIT
   in one message, ledger.commit_message).

On PostgreSQL identify sends steps 1 and 2 as one message, and the
statements sent on every request go straight to the driver (locks.send).

write() runs steps 1 to 5 for any writer, given its Plan (its lock and
read step, rule, apply step); retrying() runs an attempt again
after a lost race (deadlock or serialization failure), once after a dropped
pooled connection, and raises LostRace when a lock stayed taken. identify()
answers a request that changes nothing from one read, in no transaction,
before taking any lock.

For a writer that inserts several rows at once (a batch of orders folded
through reconcile.decide in memory): its decision is a reconcile.Batch whose
new rows are named by placeholder ids (reconcile.placeholder(i) for the i-th,
NEW_ROW for the first), in `linked_id`, `promote`, `relink` and the events
alike; apply it with apply_batch(), which returns the events with the real
ids in place of the placeholders. Its lock step takes, for every value of
the batch, what identify's takes for its two (on SQLite the one write lock
covers any batch; on PostgreSQL locks.lock_postgresql and relock_primaries
take a request's values and primaries, in a fixed order):

    def lock_and_read() -> Found | None: ...   # begins the transaction
    def rule(found: Found, now: datetime) -> Batch: ...   # pure
    plan = Plan(
        lock_and_read=lock_and_read,
        rule=rule,
        changes=lambda batch: bool(batch.events),
        apply=lambda batch, now: apply_batch(connection, batch, now=now),
        request_id=None,
    )
    written, retries = retrying(connection, lambda: write(connection, plan))
    written.applied.events, written.applied.ids   # real id by placeholder
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

import correct
import guard as guard_rules
import ledger
import locks
import purge
import reads
import store
from correct import Correction
from guard import NO_GUARD, Guard
from locks import LostRace
from reads import CustomerRows, EmailCheck, Screened
from reconcile import (
    NEW_ROW,
    Batch,
    Decision,
    Event,
    Identity,
    Ignored,
    Partners,
    decide,
)

T = TypeVar("T")
# What the read step found, what the rule decided, what applying it wrote.
F = TypeVar("F")
D = TypeVar("D")
A = TypeVar("A", bound="Applied")


class Applied(Protocol):
    """What the apply step wrote: its events are appended to the ledger."""

    @property
    def events(self) -> Sequence[Event]: ...


@dataclass(frozen=True)
class AppliedBatch:
    """A Batch once applied: its events and the real id of each inserted row
    by placeholder."""

    events: tuple[Event, ...]
    ids: dict[int, int]


@dataclass(frozen=True)
class Plan(Generic[F, D, A]):
    """What one writer brings to the pipeline; the rest is write()'s.

    `lock_and_read` begins the transaction, takes the locks and reads what
    they cover (None: nothing to write to). `rule` decides from that, at the
    time given; it is pure. `changes` says whether a decision changes
    anything. `apply` writes a decision in the transaction and returns what
    it wrote, whose events the ledger gets, with `request_id`. With
    `dry_run`, everything is rolled back once decided."""

    lock_and_read: Callable[[], F | None]
    rule: Callable[[F, datetime], D]
    changes: Callable[[D], bool]
    apply: Callable[[D, datetime], A]
    request_id: str | None
    dry_run: bool = False


@dataclass(frozen=True)
class Written(Generic[D, A]):
    """The decision (None when nothing was found to decide from) and what
    was applied (None when it changed nothing, or in a dry run)."""

    decision: D | None
    applied: A | None


def write(connection: Connection, plan: Plan[F, D, A]) -> Written[D, A]:
    """One attempt of a write: lock and read, decide, apply, append the
    events and commit (_append_and_commit), or roll back when there is
    nothing to write. Wrap it in retrying() to run it again after a lost
    race."""
    found = plan.lock_and_read()
    if found is None:
        connection.rollback()
        return Written(None, None)
    now = _now()
    decision = plan.rule(found, now)
    if plan.dry_run or not plan.changes(decision):
        connection.rollback()
        return Written(decision, None)
    applied = plan.apply(decision, now)
    _append_and_commit(connection, applied.events, at=now, request_id=plan.request_id)
    return Written(decision, applied)


def _append_and_commit(
    connection: Connection,
    events: Sequence[Event],
    *,
    at: datetime,
    request_id: str | None,
) -> None:
    """The single commit point of every write: append `events` to the ledger
    and commit. On PostgreSQL the ledger lock, the insert and COMMIT go to
    the server as one message (ledger.commit_message); the commit after it
    only ends SQLAlchemy's transaction (nothing is sent)."""
    if connection.dialect.name == "sqlite":
        ledger.append(connection, events, at=at, request_id=request_id)
    else:
        message = ledger.commit_message(
            connection, events, at=at, request_id=request_id
        )
        locks.send(connection, (message, None))
    connection.commit()


def apply_batch(connection: Connection, batch: Batch, *, now: datetime) -> AppliedBatch:
    """The apply step of a Batch: its rows (store.apply_batch), and its
    events with the real ids in place of the placeholders."""
    ids = store.apply_batch(connection, batch, now=now)
    return AppliedBatch(tuple(event.settle(ids) for event in batch.events), ids)


def retrying(
    connection: Connection, work: Callable[[], T], attempts: int = 3
) -> tuple[T, int]:
    """`work()` and how many retries it took: the whole transaction again
    after a lost race (a deadlock PostgreSQL broke, a serialization failure,
    SQLite busy), and once after a dropped pooled connection. Raises
    LostRace when every attempt lost, or at once when a lock stayed taken
    for BUSY_TIMEOUT; any other error is re-raised at once. Rolls back on
    any error; closes the connection when stopped (KeyboardInterrupt)."""
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
        except BaseException as stopped:
            if isinstance(stopped, Exception):
                connection.rollback()
            else:
                # Stopped by a signal, maybe in the middle of a statement,
                # which the driver would not let a rollback follow: closing
                # the connection rolls the transaction back.
                connection.invalidate()
            raise
    raise LostRace(f"gave up after {attempts} attempts")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Served:
    identity: Identity
    events: list[Event]
    retries: int
    ignored: tuple[Ignored, ...] = ()


@dataclass(frozen=True)
class _Found:
    """What identify's read step found: the screened values and their rows,
    and the merge partners of the two values (None with one value)."""

    screened: Screened
    partners: Partners | None


@dataclass(frozen=True)
class _Settled:
    identity: Identity
    events: list[Event]


def identify(
    connection: Connection,
    *,
    email: str | None,
    phone_number: str | None,
    request_id: str | None,
    guard: Guard = NO_GUARD,
    check_email: EmailCheck | None = None,
    attempts: int = 3,
) -> Served:
    """The customer that owns this email and/or phone number, after inserting
    or relinking contact rows and appending their events as reconcile.decide
    decides, with the values `guard` blocks or its limits refuse ignored.

    `connection` must be in autocommit mode, outside any transaction
    (models.py sets every connection up so). A request that writes commits
    before this returns. `check_email`, when given, checks and normalises an
    email that no row holds (reads.screen). Raises reads.NothingUsable when
    every value is ignored, LostRace as retrying() does."""

    def attempt() -> tuple[Decision, Identity, list[Event]]:
        version = locks.data_version(connection)
        found = reads.screen(
            connection,
            email=email,
            phone_number=phone_number,
            guard=guard,
            check_email=check_email,
        )
        first = _decide(_Found(found, None), _now(), guard)
        if not first.changes:
            return first, first.answer(), []

        def lock_and_read() -> _Found:
            return _lock_values_and_read(connection, found, version, guard=guard)

        def apply(decision: Decision, now: datetime) -> _Settled:
            ids = store.apply_batch(connection, decision.batch(), now=now)
            return _Settled(*decision.settle(ids.get(NEW_ROW)))

        def rule(found: _Found, now: datetime) -> Decision:
            return _decide(found, now, guard)

        plan = Plan(
            lock_and_read=lock_and_read,
            rule=rule,
            changes=lambda decision: decision.changes,
            apply=apply,
            request_id=request_id,
        )
        written = write(connection, plan)
        decision = written.decision
        assert decision is not None, "identify's read step always finds"
        if written.applied is None:
            return decision, decision.answer(), []
        return decision, written.applied.identity, written.applied.events

    (decision, identity, events), retries = retrying(connection, attempt, attempts)
    return Served(identity, events, retries, decision.ignored)


def _decide(found: _Found, now: datetime, guard: Guard) -> Decision:
    return decide(
        found.screened.rows,
        email=found.screened.email,
        phone_number=found.screened.phone_number,
        now=now,
        limits=guard.limits,
        partners=found.partners,
        ignored=found.screened.ignored,
    )


def _lock_values_and_read(
    connection: Connection,
    found: Screened,
    version: int | None,
    *,
    guard: Guard,
) -> _Found:
    """identify's lock and read steps: begin the transaction, make every
    other writer of these values and clusters wait for it, and screen and
    read afresh (with the merge partners of the two values): what it decides
    from them stays true until it commits.

    On PostgreSQL all of it is one message to the server (the transaction,
    the locks, then the reads: locks.lock_postgresql), since a write's time
    goes mostly to its round trips. A primary it locked may have been merged
    into another, or its customer split or erased, while it waited: the
    fresh read then holds rows of primaries other than those it locked. It
    locks those instead
    (locks.relock_primaries: keeping a lock on a row that is now another
    customer's secondary could deadlock with that customer's writer) and
    reads again, until the primaries of the rows read are exactly those it
    holds. Each further round means another writer changed these customers
    and committed meanwhile. (docs/guarantees.md: "Concurrency".)

    On SQLite `found` is still fresh, and is kept, when no other connection
    committed since `version` was taken, before it was read."""
    email, phone_number = found.email, found.phone_number
    if connection.dialect.name == "postgresql":
        locked, results = locks.lock_postgresql(
            connection,
            email=email,
            phone_number=phone_number,
            then=reads.fresh_screen_statements(
                email=email, phone_number=phone_number, guard=guard
            ),
        )
        fresh, partners = reads.fresh_screened(
            connection, results, email=email, phone_number=phone_number
        )
        while (customers := {row.customer_id for row in fresh.rows}) != locked:
            locked = locks.relock_primaries(connection, customers)
            fresh = reads.screen(
                connection, email=email, phone_number=phone_number, guard=guard
            )
            partners = _partners(connection, fresh)
        return _Found(replace(fresh, ignored=found.ignored + fresh.ignored), partners)
    locks.begin_immediate(connection)
    screened = found
    if locks.data_version(connection) != version:
        fresh = reads.screen(
            connection, email=email, phone_number=phone_number, guard=guard
        )
        screened = replace(fresh, ignored=found.ignored + fresh.ignored)
    return _Found(screened, _partners(connection, screened))


def _partners(connection: Connection, screened: Screened) -> Partners | None:
    """The merge partners of the two values, when both are kept."""
    if screened.email is None or screened.phone_number is None:
        return None
    return reads.read_partners(
        connection, email=screened.email, phone_number=screened.phone_number
    )


# A correction's rule: from the customer's rows, retired rows and evidence.
CorrectionRule = Callable[[CustomerRows], Correction]


def correct_customer(
    connection: Connection,
    contact_id: int,
    rule: CorrectionRule,
    *,
    request_id: str | None,
    evidence: bool = False,
    guard: Guard = NO_GUARD,
    block: bool = False,
    suppress: bool = False,
    dry_run: bool = False,
) -> tuple[Correction | None, int]:
    """Lock the customer that live contact `contact_id` belongs to as
    identify does, read its rows (and, with `evidence`, what joins them),
    decide with `rule` and apply the correction with its events in one
    transaction (with `dry_run`, roll it back). With `block`, the values it
    forgets become blocked values; with `suppress`, their keyed hashes are
    stored (guard.digest). Returns the correction (None when no live contact
    has that id) and the retries it took. Raises what `rule` raises, and
    LostRace."""

    def lock_and_read() -> CustomerRows | None:
        if connection.dialect.name == "postgresql":
            locks.lock_customer_postgresql(connection, contact_id)
        else:
            locks.begin_immediate(connection)
        return reads.read_customer(connection, contact_id, evidence=evidence)

    def apply(correction: Correction, now: datetime) -> Correction:
        store.apply_correction(connection, correction, now=now)
        for field, value in correction.forgotten if block else ():
            guard_rules.block_within(connection, field, value, now=now)
        if suppress:
            digests = [
                guard.digest(field, value) for field, value in correction.forgotten
            ]
            guard_rules.suppress_within(
                connection, guard, [digest for digest in digests if digest], now=now
            )
        return correction

    plan = Plan(
        lock_and_read=lock_and_read,
        rule=lambda found, _: rule(found),
        changes=lambda _: True,
        apply=apply,
        request_id=request_id,
        dry_run=dry_run,
    )
    return retrying(connection, lambda: write(connection, plan).decision)


def detach(
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

    def rule(found: CustomerRows) -> Correction:
        return correct.detach(
            found.rows,
            found.retired,
            field=field,
            value=value,
            evidence=found.evidence,
            reason=reason,
        )

    return correct_customer(
        connection,
        contact_id,
        rule,
        request_id=request_id,
        evidence=True,
        block=block,
        dry_run=dry_run,
    )


def erase(
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

    def rule(found: CustomerRows) -> Correction:
        return correct.erase(found.rows, found.retired, reason=reason)

    done, retries = correct_customer(
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
