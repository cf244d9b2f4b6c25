"""The rules of identity reconciliation as pure functions: from the rows a
request touches and its values to a plain Decision. No database, no clock, no
Flask: writes.py reads the rows (reads.py), decides here and applies the
decision (store.py)."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

PRIMARY = "primary"
SECONDARY = "secondary"

# Stands for the id of the row a decision inserts, which the database assigns
# when the decision is applied (Decision.settle puts the real id in its place).
# A Batch inserting several rows names them NEW_ROW, NEW_ROW - 1, ...
# (placeholder()); real ids are positive.
NEW_ROW = 0


def placeholder(position: int) -> int:
    """The id standing for the row at `position` (from 0) of Batch.new."""
    return NEW_ROW - position


def is_placeholder(row_id: int) -> bool:
    return row_id <= NEW_ROW


class Outcome(StrEnum):
    CREATED = "created"
    LINKED = "linked"
    MERGED = "merged"
    UNCHANGED = "unchanged"


class EventType(StrEnum):
    CREATED = "customer.created"
    CONTACT_ADDED = "customer.contact_added"
    MERGED = "customer.merged"
    PRIMARY_CHANGED = "customer.primary_changed"
    LINK_REFUSED = "customer.link_refused"
    DETACHED = "customer.detached"
    SPLIT = "customer.split"
    ERASED = "customer.erased"


# The names of the request's two fields, as the API spells them.
EMAIL = "email"
PHONE_NUMBER = "phoneNumber"

# The limits, named as their settings are.
MAX_VALUES = "MAX_VALUES_PER_CUSTOMER"
MAX_PARTNERS = "MAX_PARTNERS_PER_VALUE"


@dataclass(frozen=True)
class Ignored:
    """A value of the request that was not matched or stored, and why:
    `blocked`, `suppressed` or `limit`; for `limit`, which one (MAX_VALUES
    or MAX_PARTNERS)."""

    field: str
    reason: str
    limit: str | None = None


@dataclass(frozen=True)
class Limits:
    """How far one customer and one value may grow (docs/api.md:
    "Protection against over-merging"). `priority` names the fields, most important
    first: a request that would break a limit loses the other one."""

    max_values: int = 100
    max_partners: int = 20
    priority: tuple[str, str] = (EMAIL, PHONE_NUMBER)


@dataclass(frozen=True)
class Partners:
    """What the ledger knows of the request's values beyond the rows: the
    phones each email was merged with, the emails each phone was merged with
    (merge events store no row holding both values)."""

    phones_of_email: frozenset[str] = frozenset()
    emails_of_phone: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Member:
    """A live contact row as the rules see it. (Slots: an import keeps up
    to 100,000 of them between batches.)"""

    id: int
    email: str | None
    phone_number: str | None
    linked_id: int | None
    link_precedence: str
    created_at: datetime

    @property
    def customer_id(self) -> int:
        """The id of the primary this row is linked to, or its own."""
        return self.linked_id or self.id


@dataclass(frozen=True)
class Identity:
    """The consolidated view of one customer (the `contact` of an answer)."""

    primary_id: int
    emails: list[str]
    phone_numbers: list[str]
    secondary_ids: list[int]
    outcome: Outcome


@dataclass(frozen=True)
class Event:
    """A ledger event before it is stored: what changed, and the request's
    values that caused it (the evidence)."""

    type: EventType
    customer_id: int
    contact_ids: tuple[int, ...]
    email: str | None
    phone_number: str | None
    absorbed_customer_id: int | None = None
    previous_customer_id: int | None = None
    reason: str | None = None
    limit_name: str | None = None

    def settle(self, ids: Mapping[int, int]) -> "Event":
        """The event with the real ids of the rows inserted (`ids`: by
        placeholder) in place of their placeholders."""
        return self.renamed(lambda contact_id: ids.get(contact_id, contact_id))

    def renamed(self, name: Callable[[int], int]) -> "Event":
        """The event with `name(id)` in place of each contact id it names.
        Built field by field: an import renames every event it appends."""
        absorbed, previous = self.absorbed_customer_id, self.previous_customer_id
        return Event(
            self.type,
            name(self.customer_id),
            tuple(map(name, self.contact_ids)),
            self.email,
            self.phone_number,
            None if absorbed is None else name(absorbed),
            None if previous is None else name(previous),
            self.reason,
            self.limit_name,
        )


@dataclass(frozen=True)
class NewRow:
    """A contact row to insert; `linked_id` may be a placeholder (Batch)."""

    email: str | None
    phone_number: str | None
    linked_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class Batch:
    """The contact rows one or more identify decisions write, applied at once
    (store.apply_batch, in writes.py's apply step). `new` are the rows to
    insert, in order: the one at position i is named placeholder(i) wherever
    an id is expected (a later row's `linked_id`, `promote`, `relink`, the
    events). `promote` are rows to make primaries; `relink` pairs a row with
    the primary it is linked to as a secondary."""

    new: tuple[NewRow, ...] = ()
    promote: tuple[int, ...] = ()
    relink: tuple[tuple[int, int], ...] = ()
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What one identify request changes, and what it answers.

    `promote` is a row to make primary; `relink` the rows to link to
    `primary_id` as secondaries; `insert` the row to add. Ids equal to NEW_ROW
    in `events` and `members` stand for the inserted row's id."""

    outcome: Outcome
    primary_id: int
    promote: int | None
    relink: tuple[int, ...]
    insert: NewRow | None
    events: tuple[Event, ...]
    members: tuple[Member, ...]
    ignored: tuple[Ignored, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.events)

    def settle(self, new_id: int | None) -> tuple[Identity, list[Event]]:
        """The answer and the events, with the inserted row's real id."""
        if new_id is None:
            return self.answer(), list(self.events)
        members = [
            replace(member, id=new_id) if member.id == NEW_ROW else member
            for member in self.members
        ]
        primary_id = new_id if self.primary_id == NEW_ROW else self.primary_id
        identity = view(members, primary_id, self.outcome)
        return identity, [event.settle({NEW_ROW: new_id}) for event in self.events]

    def batch(self) -> Batch:
        """The rows this decision writes, as store.apply_batch takes them."""
        return Batch(
            new=() if self.insert is None else (self.insert,),
            promote=() if self.promote is None else (self.promote,),
            relink=tuple((row_id, self.primary_id) for row_id in self.relink),
            events=self.events,
        )

    def answer(self) -> Identity:
        return view(self.members, self.primary_id, self.outcome)


def decide(
    rows: Sequence[Member],
    *,
    email: str | None,
    phone_number: str | None,
    now: datetime,
    limits: Limits | None = None,
    partners: Partners | None = None,
    ignored: Sequence[Ignored] = (),
    created_at: datetime | None = None,
) -> Decision:
    """What an identify request with these normalised values changes, given
    every live row of every cluster that holds the email or the phone, and
    the values already ignored (blocked or suppressed ones: the caller left
    them out of `email`, `phone_number` and of the read).

    A request that would give one customer more than `limits.max_values`
    emails and phones, or pair a value with more than `limits.max_partners`
    values of the other kind (in rows or merge events: the rows' pairs are in
    `rows`, the merges' in `partners`), is decided as if it had been sent
    without its lower-priority value, and records the refused pair as a
    `customer.link_refused` event naming the limit (MAX_VALUES when both
    would break). Without `partners` (a first read, before any lock) only
    the rows' pairs count. Without `limits` nothing is refused.

    1. Nothing matches: a new primary row.
    2. One cluster matches and the request brings a value it lacks: a new
       secondary row, linked to the primary.
    3. It matches and brings nothing new: nothing changes.
    4. The values match several clusters: they merge into the one whose
       primary is oldest; the others' rows are linked to it.

    Rows whose primary was soft-deleted are handed over to the oldest live
    row of their cluster (`customer.primary_changed`).

    `created_at`, when given (an imported line's createdAt), is the inserted
    row's, whatever the rows' own: a row older than every row it matches is
    the primary of them all (`customer.created`, then
    `customer.primary_changed` for the customer whose primary was oldest and
    `customer.merged` for each other one). Without it the row is created at
    `now`, never before a row of the customer it joins."""
    decision = _link(rows, email, phone_number, now, created_at)
    # Most requests ignore nothing: no copy of the decision for them.
    unrefused = replace(decision, ignored=tuple(ignored)) if ignored else decision
    if limits is None or email is None or phone_number is None:
        return unrefused
    broken = _limit_broken(decision, rows, email, phone_number, limits, partners)
    if broken is None:
        return unrefused
    dropped = limits.priority[1]
    kept_email = None if dropped == EMAIL else email
    kept_phone = None if dropped == PHONE_NUMBER else phone_number
    matched = {
        row.customer_id
        for row in rows
        if (kept_email is not None and row.email == kept_email)
        or (kept_phone is not None and row.phone_number == kept_phone)
    }
    kept = _link(
        [r for r in rows if r.customer_id in matched],
        kept_email,
        kept_phone,
        now,
        created_at,
    )
    refused = Event(
        EventType.LINK_REFUSED,
        kept.primary_id,
        (),
        email,
        phone_number,
        reason="limit",
        limit_name=broken,
    )
    return replace(
        kept,
        events=(*kept.events, refused),
        ignored=(*ignored, Ignored(dropped, "limit", broken)),
    )


def _limit_broken(
    decision: Decision,
    rows: Sequence[Member],
    email: str,
    phone_number: str,
    limits: Limits,
    partners: Partners | None,
) -> str | None:
    """The limit `decision` breaks, or None: MAX_VALUES when it adds values
    to a customer beyond max_values (checked first), MAX_PARTNERS when it
    pairs the email and the phone while one of them already has
    max_partners partners. With both values sent, a decision that grows a
    customer pairs them: its new row holds both, or its merge event has
    both as evidence."""
    merges = any(event.type is EventType.MERGED for event in decision.events)
    grows = merges or decision.insert is not None
    if not grows:
        return None
    values = {m.email for m in decision.members} | {
        m.phone_number for m in decision.members
    }
    if len(values - {None}) > limits.max_values:
        return MAX_VALUES
    known = partners or Partners()
    phones = {r.phone_number for r in rows if r.email == email} | known.phones_of_email
    emails = {
        r.email for r in rows if r.phone_number == phone_number
    } | known.emails_of_phone
    phones.discard(None)
    emails.discard(None)
    if (phone_number not in phones and len(phones) >= limits.max_partners) or (
        email not in emails and len(emails) >= limits.max_partners
    ):
        return MAX_PARTNERS
    return None


def _link(
    rows: Sequence[Member],
    email: str | None,
    phone_number: str | None,
    now: datetime,
    created_at: datetime | None = None,
) -> Decision:
    """The four rules, with nothing refused."""
    if email is None and phone_number is None:
        raise ValueError("decide() needs an email, a phone number, or both")
    if not rows:
        at = now if created_at is None else created_at
        new = Member(NEW_ROW, email, phone_number, None, PRIMARY, at)
        return Decision(
            outcome=Outcome.CREATED,
            primary_id=NEW_ROW,
            promote=None,
            relink=(),
            insert=NewRow(email, phone_number, None, at),
            events=(
                Event(EventType.CREATED, NEW_ROW, (NEW_ROW,), email, phone_number),
            ),
            members=(new,),
        )

    primary = oldest(rows)
    if (
        created_at is not None
        and created_at < primary.created_at
        and _brings_new(rows, email, phone_number)
    ):
        return _older_than_all(rows, email, phone_number, created_at)
    misplaced = [row for row in rows if not _in_place(row, primary)]
    events = [
        _relink_event(primary, group, email, phone_number)
        for group in _by_customer(misplaced).values()
    ]
    merged = any(event.type is EventType.MERGED for event in events)
    outcome = Outcome.MERGED if merged else Outcome.UNCHANGED
    members = list(rows)
    insert = None
    if _brings_new(rows, email, phone_number):
        if created_at is None:
            # Clocks of several app instances may disagree; a secondary must
            # never look older than the primary it joins.
            created_at = max(now, max(row.created_at for row in rows))
        insert = NewRow(email, phone_number, primary.id, created_at)
        members.append(
            Member(NEW_ROW, email, phone_number, primary.id, SECONDARY, created_at)
        )
        events.append(
            Event(
                EventType.CONTACT_ADDED,
                primary.id,
                (NEW_ROW,),
                email,
                phone_number,
            )
        )
        outcome = outcome if merged else Outcome.LINKED
    return Decision(
        outcome=outcome,
        primary_id=primary.id,
        promote=primary.id if primary in misplaced else None,
        relink=tuple(row.id for row in misplaced if row is not primary),
        insert=insert,
        events=tuple(events),
        members=tuple(members),
    )


def _older_than_all(
    rows: Sequence[Member],
    email: str | None,
    phone_number: str | None,
    created_at: datetime,
) -> Decision:
    """A new row, older than every row it matches, becomes the primary of
    their customers: the one whose primary was oldest changes primary, the
    others are merged into it."""
    groups = _by_customer(rows)
    eldest = oldest(rows).customer_id
    events = [Event(EventType.CREATED, NEW_ROW, (NEW_ROW,), email, phone_number)]
    for former, group in groups.items():
        ids = tuple(row.id for row in group)
        if former == eldest:
            events.append(
                Event(
                    EventType.PRIMARY_CHANGED,
                    NEW_ROW,
                    ids,
                    email,
                    phone_number,
                    previous_customer_id=former,
                )
            )
        else:
            events.append(
                Event(
                    EventType.MERGED,
                    NEW_ROW,
                    ids,
                    email,
                    phone_number,
                    absorbed_customer_id=former,
                )
            )
    members = [
        replace(row, linked_id=NEW_ROW, link_precedence=SECONDARY) for row in rows
    ]
    members.append(Member(NEW_ROW, email, phone_number, None, PRIMARY, created_at))
    return Decision(
        outcome=Outcome.MERGED if len(groups) > 1 else Outcome.LINKED,
        primary_id=NEW_ROW,
        promote=None,
        relink=tuple(row.id for row in rows),
        insert=NewRow(email, phone_number, None, created_at),
        events=tuple(events),
        members=tuple(members),
    )


def views(rows: Sequence[Member]) -> list[Identity]:
    """The customers these rows belong to, ascending primary id, as identify
    would answer them (a cluster whose primary was soft-deleted is shown with
    its oldest live row as primary, as the next write will make it)."""
    answers = [
        view(group, oldest(group).id, Outcome.UNCHANGED)
        for group in _by_customer(rows).values()
    ]
    return sorted(answers, key=lambda identity: identity.primary_id)


def view(members: Iterable[Member], primary_id: int, outcome: Outcome) -> Identity:
    """The consolidated view: the primary's own values first, then the others
    in the order their rows were created (ascending id)."""
    ordered = sorted(members, key=lambda member: (member.id != primary_id, member.id))
    return Identity(
        primary_id=primary_id,
        emails=_distinct(member.email for member in ordered),
        phone_numbers=_distinct(member.phone_number for member in ordered),
        secondary_ids=[member.id for member in ordered if member.id != primary_id],
        outcome=outcome,
    )


def oldest(rows: Iterable[Member]) -> Member:
    return min(rows, key=lambda row: (row.created_at, row.id))


def _in_place(row: Member, primary: Member) -> bool:
    if row is primary:
        return row.linked_id is None and row.link_precedence == PRIMARY
    return row.linked_id == primary.id and row.link_precedence == SECONDARY


def _by_customer(rows: Iterable[Member]) -> dict[int, list[Member]]:
    groups: dict[int, list[Member]] = {}
    for row in rows:
        groups.setdefault(row.customer_id, []).append(row)
    return groups


def _relink_event(
    primary: Member,
    group: list[Member],
    email: str | None,
    phone_number: str | None,
) -> Event:
    """The event for rows of one former customer that are linked to `primary`:
    a merge, or, when `primary` is one of them (the customer's own primary was
    soft-deleted), a change of primary."""
    former = group[0].customer_id
    ids = tuple(row.id for row in group)
    if primary in group:
        return Event(
            EventType.PRIMARY_CHANGED,
            primary.id,
            ids,
            email,
            phone_number,
            previous_customer_id=former,
        )
    return Event(
        EventType.MERGED,
        primary.id,
        ids,
        email,
        phone_number,
        absorbed_customer_id=former,
    )


def _brings_new(
    rows: Sequence[Member], email: str | None, phone_number: str | None
) -> bool:
    new_email = email is not None and email not in {row.email for row in rows}
    new_phone = phone_number is not None and phone_number not in {
        row.phone_number for row in rows
    }
    return new_email or new_phone


def _distinct(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value is not None))
