"""Applying a file's sorted lines (import_lines.py) as /identify would, one
after the other, in batches: each batch is one write of the pipeline
(writes.py) under the locks identify takes, and records how far the file got
(models.ImportedFile), so a run that stops leaves whole batches and the next
run starts after them (README: "Importing and exporting").

Decide, then apply: a batch reads every cluster its values touch, the shop's
blocked and suppressed values among them and their merge partners, in a few
statements; folds reconcile.decide over its lines in memory, each line
seeing what the lines before it changed; then the pipeline writes the
rows, links and events in bulk (a reconcile.Batch) and commits."""

import gc
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Connection

import locks
import writes
from guard import Guard, builtin_rule
from import_lines import Line, Sorted
from reconcile import (
    EMAIL,
    NEW_ROW,
    PHONE_NUMBER,
    PRIMARY,
    SECONDARY,
    Batch,
    Decision,
    Event,
    EventType,
    Ignored,
    Member,
    NewRow,
    Outcome,
    Partners,
    decide,
    placeholder,
)

# The ids rows inserted by a batch have while it is decided: above every real
# id (ids are 32-bit), in the order they are inserted, so that a tie on
# createdAt goes to the older row as it does in the table (reconcile.oldest);
# the pipeline's placeholders (reconcile.placeholder) when it is applied.
_FIRST_NEW = 2**31
K = TypeVar("K")


# A line's email and phone through the built-in blocklist, and the values it
# dropped.
Screened = tuple[str | None, str | None, tuple[Ignored, ...]]


class AnotherRun(Exception):
    """Another run of the same file moved its progress meanwhile."""


@dataclass
class Tally:
    """What the lines did, as /identify would have answered them: `created`
    a customer, `added` a contact to one, `merged` customers, changed
    nothing (`unchanged`), or nothing at all because every value was
    ignored (`not_stored`, identify's 422); and the values ignored, by
    reason (blocked, suppressed, limit)."""

    created: int = 0
    added: int = 0
    merged: int = 0
    unchanged: int = 0
    not_stored: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    events: int = 0
    # The longest a batch held its locks (SQLite: the write lock), seconds.
    longest_lock: float = 0.0

    def add(self, other: "Tally") -> None:
        self.created += other.created
        self.added += other.added
        self.merged += other.merged
        self.unchanged += other.unchanged
        self.not_stored += other.not_stored
        self.ignored.update(other.ignored)
        self.events += other.events
        self.longest_lock = max(self.longest_lock, other.longest_lock)

    def count(self, decision: Decision) -> None:
        if decision.outcome is Outcome.CREATED:
            self.created += 1
        elif decision.outcome is Outcome.LINKED:
            self.added += 1
        elif decision.outcome is Outcome.MERGED:
            self.merged += 1
        else:
            self.unchanged += 1
        self.ignored.update(ignored.reason for ignored in decision.ignored)


@dataclass(frozen=True)
class Read:
    """What a batch's lines are decided from: every live row of every cluster
    holding one of their values, which of the values are the shop's blocked
    ones or suppressed, and the merge events naming them."""

    rows: list[Member]
    blocked: set[tuple[str, str]]
    suppressed: set[str]
    merged: list[tuple[str | None, str | None]]


class Clusters:
    """The rows a batch reads, changed in memory as store.apply changes the
    table, so that each line is decided from what the lines before it left;
    with the flags and merge partners of the values read (`emails`,
    `phones`)."""

    def __init__(self) -> None:
        self.emails: set[str] = set()
        self.phones: set[str] = set()
        self.blocked: set[tuple[str, str]] = set()
        self.suppressed: set[str] = set()
        self.rows: dict[int, Member] = {}
        self.customers: dict[int, set[int]] = {}
        # The rows holding each value: a tuple, as most values have one row
        # and a set takes four times the memory (Kept).
        self.by_email: dict[str, tuple[int, ...]] = {}
        self.by_phone: dict[str, tuple[int, ...]] = {}
        self.phones_of_email: dict[str, set[str]] = {}
        self.emails_of_phone: dict[str, set[str]] = {}
        self.moved: set[int] = set()
        self.inserted: list[int] = []

    def unseen(self, values: "_Values", guard: Guard) -> "_Values":
        """The values of `values` not read yet."""
        return _values_of(
            [email for email in values.emails if email not in self.emails],
            [phone for phone in values.phones if phone not in self.phones],
            values.screened,
            guard,
        )

    def extend(self, read: Read, values: "_Values") -> "Clusters":
        """Add what was read for `values`. A row already here is as the
        table holds it (these clusters are whole, and change only as the
        table does)."""
        self.emails.update(values.emails)
        self.phones.update(values.phones)
        self.blocked |= read.blocked
        self.suppressed |= read.suppressed
        for row in read.rows:
            if row.id not in self.rows:
                self._add(row)
        for email, phone in read.merged:
            self._merged(email, phone)
        return self

    def committed(self, ids: dict[int, int]) -> None:
        """The batch was written: its rows take their real ids (`ids`, by
        placeholder), and the next batch starts from them."""
        real = {
            row_id: ids[placeholder(position)]
            for position, row_id in enumerate(self.inserted)
        }
        changed = set(real)
        for row_id in real:
            changed.update(self.customers.get(row_id, ()))
        rows = [self._remove(row_id) for row_id in changed]
        for row in rows:
            linked_id = row.linked_id
            self._add(
                Member(
                    real.get(row.id, row.id),
                    row.email,
                    row.phone_number,
                    None if linked_id is None else real.get(linked_id, linked_id),
                    row.link_precedence,
                    row.created_at,
                )
            )
        self.moved = set()
        self.inserted = []

    def touched(self, email: str | None, phone_number: str | None) -> list[Member]:
        """Every row of every customer holding the email or the phone,
        ascending id (store.read_clusters)."""
        holders = self.by_email.get(email, ()) if email is not None else ()
        if phone_number is not None:
            holders += self.by_phone.get(phone_number, ())
        customers = {self.rows[row_id].customer_id for row_id in holders}
        ids = sorted(i for customer in customers for i in self.customers[customer])
        return [self.rows[row_id] for row_id in ids]

    def holds(self, email: str | None, phone_number: str | None) -> bool:
        """Whether one customer holds every value given, and its primary is
        a live row (none to hand over: reconcile.decide's rule 3). Each value
        belongs to one customer, so one row holding it says which."""
        customer = None
        if email is not None:
            holders = self.by_email.get(email)
            if holders is None:
                return False
            customer = self.rows[holders[0]].customer_id
        if phone_number is not None:
            holders = self.by_phone.get(phone_number)
            if holders is None:
                return False
            held_by = self.rows[holders[0]].customer_id
            if customer is not None and held_by != customer:
                return False
            customer = held_by
        primary = None if customer is None else self.rows.get(customer)
        return primary is not None and primary.linked_id is None

    def partners(self, email: str, phone_number: str) -> Partners:
        return Partners(
            phones_of_email=frozenset(self.phones_of_email.get(email, ())),
            emails_of_phone=frozenset(self.emails_of_phone.get(phone_number, ())),
        )

    def apply(self, decision: Decision, new_id: int | None) -> list[Event]:
        """Change the rows as store.apply changes the table; return the
        decision's events naming the rows the batch inserts, `new_id` among
        them, by the pipeline's placeholders (_placeholders)."""
        primary_id = decision.primary_id
        if primary_id == NEW_ROW and new_id is not None:
            primary_id = new_id
        if decision.insert is not None and new_id is not None:
            row = decision.insert
            link = PRIMARY if row.linked_id is None else SECONDARY
            self._add(
                Member(
                    new_id,
                    row.email,
                    row.phone_number,
                    row.linked_id,
                    link,
                    row.created_at,
                )
            )
            self.inserted.append(new_id)
        if decision.promote is not None:
            self._move(decision.promote, None)
        for row_id in decision.relink:
            self._move(row_id, primary_id)
        name = _placeholders(new_id)
        events = [event.renamed(name) for event in decision.events]
        for event in events:
            if event.type is EventType.MERGED:
                self._merged(event.email, event.phone_number)
        return events

    def _add(self, row: Member) -> None:
        self.rows[row.id] = row
        self.customers.setdefault(row.customer_id, set()).add(row.id)
        if row.email is not None:
            self.by_email[row.email] = (*self.by_email.get(row.email, ()), row.id)
        if row.phone_number is not None:
            held = self.by_phone.get(row.phone_number, ())
            self.by_phone[row.phone_number] = (*held, row.id)

    def _remove(self, row_id: int) -> Member:
        row = self.rows.pop(row_id)
        _discard(self.customers, row.customer_id, row_id)
        for index, value in (
            (self.by_email, row.email),
            (self.by_phone, row.phone_number),
        ):
            if value is None:
                continue
            held = tuple(each for each in index[value] if each != row_id)
            if held:
                index[value] = held
            else:
                del index[value]
        return row

    def _move(self, row_id: int, primary_id: int | None) -> None:
        row = self.rows[row_id]
        self.customers[row.customer_id].discard(row_id)
        link = PRIMARY if primary_id is None else SECONDARY
        moved = Member(
            row.id, row.email, row.phone_number, primary_id, link, row.created_at
        )
        self.rows[row_id] = moved
        self.customers.setdefault(moved.customer_id, set()).add(row_id)
        self.moved.add(row_id)

    def _merged(self, email: str | None, phone_number: str | None) -> None:
        if email is not None and phone_number is not None:
            self.phones_of_email.setdefault(email, set()).add(phone_number)
            self.emails_of_phone.setdefault(phone_number, set()).add(email)


def _discard(index: dict[K, set[int]], key: K, row_id: int) -> None:
    holders = index[key]
    holders.discard(row_id)
    if not holders:
        del index[key]


def _placeholders(new_id: int | None) -> Callable[[int], int]:
    """The pipeline's name of each id of a decision: its inserted row
    (NEW_ROW) is `new_id`, and each row the batch inserts is the placeholder
    of its position among them (_FIRST_NEW onwards, in order); a row read
    keeps its id."""

    def name(row_id: int) -> int:
        if row_id == NEW_ROW and new_id is not None:
            row_id = new_id
        return placeholder(row_id - _FIRST_NEW) if row_id >= _FIRST_NEW else row_id

    return name


@dataclass
class Folded:
    """A batch decided: the rows as they end, the events in order, and the
    tally of its lines."""

    clusters: Clusters
    events: list[Event]
    tally: Tally


def fold(
    clusters: Clusters,
    lines: Iterable[Line],
    screened: Iterable[Screened],
    *,
    guard: Guard,
    now: datetime,
) -> Folded:
    """Decide each line as identify would, from `clusters` (which hold every
    value of the lines) as the lines before it changed them: the built-in
    blocklist (`screened`, the lines' values through it, by _values), then
    the shop's blocked values and the suppressed ones, then reconcile.decide
    with the limits and merge partners. A line without createdAt is created
    at `now`. No connection: `clusters` change as the table will."""
    events: list[Event] = []
    tally = Tally()
    next_id = _FIRST_NEW
    suppressed = clusters.suppressed
    for line, (email, phone_number, ignored) in zip(lines, screened, strict=True):
        for kind, value in ((EMAIL, email), (PHONE_NUMBER, phone_number)):
            if value is None:
                continue
            if (kind, value) in clusters.blocked:
                ignored = (*ignored, Ignored(kind, "blocked"))
            elif suppressed and guard.digest(kind, value) in suppressed:
                ignored = (*ignored, Ignored(kind, "suppressed"))
            else:
                continue
            if kind == EMAIL:
                email = None
            else:
                phone_number = None
        if email is None and phone_number is None:
            tally.not_stored += 1
            tally.ignored.update(each.reason for each in ignored)
            continue
        if clusters.holds(email, phone_number):
            # Rule 3 with nothing to hand over: decide() would change nothing
            # (most lines of an order history: a customer's next order).
            tally.unchanged += 1
            if ignored:
                tally.ignored.update(each.reason for each in ignored)
            continue
        both = email is not None and phone_number is not None
        decision = decide(
            clusters.touched(email, phone_number),
            email=email,
            phone_number=phone_number,
            now=now,
            limits=guard.limits,
            partners=clusters.partners(email, phone_number) if both else None,  # type: ignore[arg-type]
            ignored=ignored,
            created_at=line.created_at,
        )
        tally.count(decision)
        if not decision.changes:
            continue
        new_id = None
        if decision.insert is not None:
            new_id = next_id
            next_id += 1
        events += clusters.apply(decision, new_id)
    tally.events = len(events)
    return Folded(clusters, events, tally)


@lru_cache(maxsize=1 << 16)
def _builtin(field: str, value: str) -> bool:
    return builtin_rule(field, value) is not None


def _screen(guard: Guard, email: str | None, phone_number: str | None) -> Screened:
    """guard.screen, each value's verdict remembered: a customer's values come
    back at each of its orders."""
    if not guard.builtin:
        return email, phone_number, ()
    ignored: tuple[Ignored, ...] = ()
    if email is not None and _builtin(EMAIL, email):
        email = None
        ignored = (Ignored(EMAIL, "blocked"),)
    if phone_number is not None and _builtin(PHONE_NUMBER, phone_number):
        phone_number = None
        ignored = (*ignored, Ignored(PHONE_NUMBER, "blocked"))
    return email, phone_number, ignored


@dataclass(frozen=True)
class Progress:
    """Where a file's import stands: its SHA-256, its good lines, and how
    many of them, sorted, are committed before this batch."""

    sha256: str
    lines: int
    applied: int


@dataclass(frozen=True)
class _Found:
    """What a batch's lock-and-read step found: the clusters and flags, and,
    on SQLite, the batch already decided from them when no other writer
    committed between that read and the write lock."""

    clusters: Clusters
    folded: Folded | None


class Kept:
    """SQLite: the clusters as the last batch committed them, for the next
    batch to read only the values they lack, while no other connection
    commits (PRAGMA data_version, on the same driver connection: it counts
    the commits of the others). A batch takes them, and they are kept again
    only once it commits; from MAX_ROWS rows, or twice as many values read
    (values no row holds: blocked ones), they are dropped (memory stays
    bounded)."""

    MAX_ROWS = 100_000

    def __init__(self) -> None:
        self.clusters: Clusters | None = None
        self.version: tuple[object, int | None] | None = None

    def take(self, connection: Connection, version: int | None) -> Clusters:
        """The clusters kept, if nothing was committed since; else none."""
        clusters, self.clusters = self.clusters, None
        if clusters is None or self.version != (locks.driver(connection), version):
            return Clusters()
        return clusters

    def keep(
        self,
        connection: Connection,
        version: int | None,
        clusters: Clusters,
        ids: dict[int, int],
    ) -> None:
        """`clusters`, committed with the real ids `ids` (by placeholder), as
        the table is at `version`."""
        read = len(clusters.emails) + len(clusters.phones)
        if len(clusters.rows) >= self.MAX_ROWS or read >= 2 * self.MAX_ROWS:
            return
        clusters.committed(ids)
        self.clusters = clusters
        self.version = (locks.driver(connection), version)


def apply_batch(
    connection: Connection,
    lines: Sequence[Line],
    progress: Progress,
    *,
    guard: Guard,
    kept: Kept,
    attempts: int = 5,
) -> Tally:
    """Apply `lines`, the next ones of the file after `progress.applied`,
    through the write pipeline (writes.write): one transaction under
    identify's locks, the rows and events of every line, and the file's
    progress moved past them; committed. Decided from the clusters `kept`
    by the batch before, on SQLite. Returns their tally. Retried after
    a lost race (a PostgreSQL deadlock); raises LostRace when every attempt
    lost, and AnotherRun when the file's progress is not where `progress`
    says."""
    values = _values(lines, guard)
    locked = time.monotonic()
    version = None

    def lock_and_read() -> _Found:
        nonlocal locked, version
        folded = None
        if connection.dialect.name == "sqlite":
            # Decided before the write lock, and again under it only if
            # another writer committed meanwhile: the lock is held for the
            # writes alone.
            before = locks.data_version(connection)
            clusters = kept.take(connection, before)
            clusters.extend(
                _read(connection, clusters.unseen(values, guard), guard), values
            )
            folded = fold(
                clusters, lines, values.screened, guard=guard, now=datetime.now(UTC)
            )
            locks.begin_immediate(connection)
            locked = time.monotonic()
            version = locks.data_version(connection)
            if version != before:
                clusters = Clusters().extend(_read(connection, values, guard), values)
                folded = None
        else:
            locked = time.monotonic()
            read = _lock_postgresql(connection, values, guard, progress.sha256)
            clusters = Clusters().extend(read, values)
        _check_progress(connection, progress)
        return _Found(clusters, folded)

    def rule(found: _Found, now: datetime) -> Folded:
        return found.folded or fold(
            found.clusters, lines, values.screened, guard=guard, now=now
        )

    def apply(folded: Folded, now: datetime) -> writes.AppliedBatch:
        done = writes.apply_batch(connection, _batch(folded), now=now)
        _record_progress(connection, progress, len(lines), now)
        return done

    plan = writes.Plan(
        lock_and_read=lock_and_read,
        rule=rule,
        # The file's progress moves even when none of the lines changes
        # anything: a batch always writes.
        changes=lambda _: True,
        apply=apply,
        request_id=None,
    )
    written, _ = writes.retrying(
        connection, lambda: writes.write(connection, plan), attempts
    )
    assert written.decision is not None and written.applied is not None
    if connection.dialect.name == "sqlite":
        kept.keep(connection, version, written.decision.clusters, written.applied.ids)
    tally = written.decision.tally
    tally.longest_lock = time.monotonic() - locked
    return tally


def _batch(folded: Folded) -> Batch:
    """The batch's rows as the pipeline applies them: the new rows in the
    order they were inserted, named by placeholder (reconcile.placeholder)
    wherever an id is expected, and the rows read that moved, as they end."""
    clusters = folded.clusters
    named = {row_id: placeholder(i) for i, row_id in enumerate(clusters.inserted)}

    def name(row_id: int) -> int:
        return named.get(row_id, row_id)

    new = tuple(
        NewRow(
            row.email,
            row.phone_number,
            None if row.linked_id is None else name(row.linked_id),
            row.created_at,
        )
        for row in (clusters.rows[row_id] for row_id in clusters.inserted)
    )
    moved = [
        clusters.rows[row_id]
        for row_id in sorted(clusters.moved)
        if row_id not in named
    ]
    return Batch(
        new=new,
        promote=tuple(row.id for row in moved if row.linked_id is None),
        relink=tuple(
            (row.id, name(row.linked_id)) for row in moved if row.linked_id is not None
        ),
        events=tuple(folded.events),
    )


def applied(connection: Connection, sha256: str) -> int:
    """How many of the file's sorted lines are committed (0 for a new file)."""
    found = connection.exec_driver_sql(
        _param("SELECT applied FROM imported_file WHERE sha256 = ?", connection),
        (sha256,),
    ).scalar()
    return int(found or 0)


@dataclass(frozen=True)
class _Values:
    emails: list[str]
    phones: list[str]
    digests: list[str]
    screened: list[Screened]


def _values(lines: Sequence[Line], guard: Guard) -> _Values:
    """The batch's emails and phones, but those the built-in rules drop, and
    each line's values screened so (fold)."""
    emails: set[str] = set()
    phones: set[str] = set()
    screened = [_screen(guard, line.email, line.phone_number) for line in lines]
    for email, phone_number, _ in screened:
        if email is not None:
            emails.add(email)
        if phone_number is not None:
            phones.add(phone_number)
    return _values_of(sorted(emails), sorted(phones), screened, guard)


def _values_of(
    emails: list[str], phones: list[str], screened: list[Screened], guard: Guard
) -> _Values:
    digests = [guard.digest(EMAIL, email) for email in emails] + [
        guard.digest(PHONE_NUMBER, phone) for phone in phones
    ]
    return _Values(
        emails, phones, [each for each in digests if each is not None], screened
    )


# The SQL of a batch's reads, per engine: each list is one JSON text
# (json_each, jsonb_array_elements_text). PostgreSQL's driver would turn a
# list into an array in Python, for every statement that reads it.
_SQL = {
    "sqlite": {
        "list": "(SELECT value FROM json_each({}))",
        "param": ":{}",
    },
    "postgresql": {
        "list": "ANY(ARRAY(SELECT jsonb_array_elements_text({}::jsonb)))",
        "param": "%({})s",
    },
}


def _in(connection: Connection, column: str, name: str) -> str:
    sql = _SQL[connection.dialect.name]
    param = sql["param"].format(name)
    operator = " IN " if connection.dialect.name == "sqlite" else " = "
    return column + operator + sql["list"].format(param)


def _param(statement: str, connection: Connection) -> str:
    return (
        statement.replace("?", "%s")
        if connection.dialect.name != "sqlite"
        else statement
    )


def _clusters_sql(connection: Connection) -> str:
    hits = (
        "SELECT DISTINCT coalesce(linked_id, id) AS id FROM contact"
        f" WHERE deleted_at IS NULL AND ({_in(connection, 'email', 'emails')}"
        f" OR {_in(connection, 'phone_number', 'phones')})"
    )
    columns = (
        "contact.id, contact.email, contact.phone_number, contact.linked_id,"
        " contact.link_precedence, contact.created_at"
    )
    return (
        f"WITH hits AS ({hits})"
        f" SELECT {columns} FROM contact JOIN hits ON contact.id = hits.id"
        " WHERE contact.deleted_at IS NULL"
        f" UNION SELECT {columns} FROM contact JOIN hits"
        " ON contact.linked_id = hits.id WHERE contact.deleted_at IS NULL"
    )


def _read(connection: Connection, values: _Values, guard: Guard) -> Read:
    if not values.emails and not values.phones:
        return Read([], set(), set(), [])
    return Read(
        _read_clusters(connection, values),
        *_read_screen(connection, values, guard),
    )


def _parameters(values: _Values) -> dict[str, str]:
    return {
        "emails": json.dumps(values.emails),
        "phones": json.dumps(values.phones),
        "digests": json.dumps(values.digests),
    }


def _query(connection: Connection, statement: str, values: _Values) -> list[Any]:
    """The rows `statement` finds, through the driver's own cursor."""
    parameters = _parameters(values)
    if connection.dialect.name == "sqlite":
        return locks.driver(connection).execute(statement, parameters).fetchall()
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        rows: list[Any] = cursor.execute(statement, parameters).fetchall()
    return rows


def _read_clusters(connection: Connection, values: _Values) -> list[Member]:
    found = _query(connection, _clusters_sql(connection), values)
    if connection.dialect.name == "sqlite":
        return [
            Member(i, email, phone, linked, link, _utc(created))
            for i, email, phone, linked, link, created in found
        ]
    return [Member(*row) for row in found]


def _utc(value: str) -> datetime:
    """A timestamp as SQLAlchemy's DateTime stores it on SQLite."""
    return datetime.fromisoformat(value + "+00:00")


def _read_screen(
    connection: Connection, values: _Values, guard: Guard
) -> tuple[set[tuple[str, str]], set[str], list[tuple[str | None, str | None]]]:
    blocked_sql = (
        "SELECT email, phone_number FROM blocked_value"
        f" WHERE {_in(connection, 'email', 'emails')}"
        f" OR {_in(connection, 'phone_number', 'phones')}"
    )
    blocked: set[tuple[str, str]] = set()
    for email, phone in _query(connection, blocked_sql, values):
        blocked.add((EMAIL, email) if email is not None else (PHONE_NUMBER, phone))
    suppressed: set[str] = set()
    if values.digests:
        suppressed_sql = (
            "SELECT digest FROM suppressed_value"
            f" WHERE {_in(connection, 'digest', 'digests')}"
        )
        suppressed = {row[0] for row in _query(connection, suppressed_sql, values)}
    # Each half reads one value's merge index (models.MERGED_WITH).
    merged_sql = (
        f"SELECT email, phone_number FROM {_merged_index(connection, 'email')}"
        " WHERE type = 'customer.merged'"
        f" AND email IS NOT NULL AND {_in(connection, 'email', 'emails')}"
        " UNION SELECT email, phone_number"
        f" FROM {_merged_index(connection, 'phone_number')}"
        " WHERE type = 'customer.merged' AND phone_number IS NOT NULL"
        f" AND {_in(connection, 'phone_number', 'phones')}"
    )
    merged = [(email, phone) for email, phone in _query(connection, merged_sql, values)]
    return blocked, suppressed, merged


def _merged_index(connection: Connection, column: str) -> str:
    """The event table, read through its merge index on `column`: SQLite's
    planner, given a list of values, would read every merge event by type
    instead, a batch slower the more merges the table holds."""
    if connection.dialect.name == "sqlite":
        return f"event INDEXED BY ix_event_merged_{column}"
    return "event"


def _lock_postgresql(
    connection: Connection, values: _Values, guard: Guard, sha256: str
) -> Read:
    """Begin the batch's transaction, lock its values as identify locks a
    request's (in one order, so two batches or a batch and a request never
    wait for each other in a circle) and the file's progress (two runs of
    one file take turns, and the second finds the first's progress), then
    the primaries of the clusters they touch, oldest first, until the
    clusters read are those locked (as writes.py does for identify); return
    what it reads then."""
    keys = sorted(
        {locks.lock_key("email", email) for email in values.emails}
        | {locks.lock_key("phone", phone) for phone in values.phones}
        | {locks.lock_key("import", sha256)}
    )
    locks.lock_identifiers_postgresql(connection, keys)
    locked: set[int] = set()
    while True:
        rows = _read_clusters(connection, values)
        customers = {row.customer_id for row in rows}
        if customers == locked:
            break
        locked = locks.relock_primaries(connection, customers)
    return Read(rows, *_read_screen(connection, values, guard))


def _check_progress(connection: Connection, progress: Progress) -> None:
    statement = "SELECT applied FROM imported_file WHERE sha256 = ?"
    found = connection.exec_driver_sql(
        _param(statement, connection), (progress.sha256,)
    ).scalar()
    if int(found or 0) != progress.applied:
        raise AnotherRun("another import of the same file moved its progress meanwhile")


def _record_progress(
    connection: Connection, progress: Progress, count: int, now: datetime
) -> None:
    """Move the file's progress past the batch's `count` lines, in the
    batch's transaction."""
    connection.exec_driver_sql(
        _param(
            "INSERT INTO imported_file (sha256, lines, applied, started_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE"
            " SET applied = excluded.applied, updated_at = excluded.updated_at",
            connection,
        ),
        (
            progress.sha256,
            progress.lines,
            progress.applied + count,
            _stamp(connection, now),
            _stamp(connection, now),
        ),
    )


def _stamp(connection: Connection, at: datetime) -> Any:
    """A timestamp as each driver takes it: on SQLite the text SQLAlchemy's
    DateTime stores (UTC, no zone)."""
    if connection.dialect.name == "sqlite":
        return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return at


def import_sorted(
    connection: Connection,
    lines: Sorted,
    *,
    guard: Guard,
    batch_size: int,
    done: Callable[[int], None] = lambda _: None,
) -> tuple[Tally, int]:
    """Apply the file's sorted lines that no earlier run committed, in
    batches of `batch_size` (apply_batch); `done` is told each batch's size,
    and, first, how many lines earlier runs committed. Returns the tally of
    this run and that number.

    What is alive after each batch (the app, the clusters kept) is left out
    of the cyclic garbage collector's full passes (gc.freeze) until the
    import ends: none of it is garbage, and each pass went through all of it
    again, a tenth of an import's time."""
    start = applied(connection, lines.sha256)
    done(start)
    tally = Tally()
    progress = Progress(lines.sha256, lines.lines, start)
    statistics = _Statistics(connection)
    kept = Kept()
    batch: list[Line] = []
    try:
        for index, line in enumerate(lines):
            if index < start:
                continue
            batch.append(line)
            if len(batch) == batch_size:
                tally.add(
                    apply_batch(connection, batch, progress, guard=guard, kept=kept)
                )
                progress = replace(progress, applied=progress.applied + len(batch))
                done(len(batch))
                statistics.grown(tally.created + tally.added)
                batch = []
                gc.freeze()
        if batch:
            tally.add(apply_batch(connection, batch, progress, guard=guard, kept=kept))
            done(len(batch))
    finally:
        gc.unfreeze()
    statistics.grown(tally.created + tally.added, last=True)
    return tally, start


class _Statistics:
    """PostgreSQL: ANALYZE the contact and event tables each time the import
    has doubled the rows it inserted since the last time (from the first
    MIN_ANALYZE on), and at the end. With statistics from before the import,
    the planner takes a table grown from 0 to 100,000 rows for 15 and reads
    a batch's clusters by scanning it whole: every batch slower than the
    last (3 s a batch at 50,000 lines), and live requests with it."""

    MIN_ANALYZE = 5000

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.at = 0

    def grown(self, inserted: int, *, last: bool = False) -> None:
        if self.connection.dialect.name != "postgresql":
            return
        due = max(self.MIN_ANALYZE, 2 * self.at)
        if inserted >= due or (last and inserted > self.at):
            self.connection.exec_driver_sql("ANALYZE contact, event")
            self.at = inserted
