"""The property tests' yardsticks: the contract's rules written to be
obviously right (ReferenceModel, LimitedModel), an in-memory table that
applies the pure rules' decisions as store.apply_batch would (Table), and how many
examples each property test runs under the loaded Hypothesis profile."""

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import settings

from invariants import LedgerEvent, Row
from reconcile import (
    Decision,
    Event,
    EventType,
    Limits,
    Member,
    NewRow,
    Partners,
    decide,
)

# Hypothesis's own default; the quick profile (`make check`) sets fewer.
FULL_EXAMPLES = 100


def examples(full: int) -> int:
    """`full` under the default profile (`make test`); under a profile with
    fewer max_examples, as many fewer in proportion (at least 1): the quick
    profile's 10 run a tenth of each test's examples."""
    return max(1, full * settings.default.max_examples // FULL_EXAMPLES)


EMAILS = ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu", "doc@fluxkart.com"]
PHONES = ["123456", "919191", "717171", "5550000"]


@dataclass
class ModelRow:
    id: int
    email: str | None
    phone: str | None
    linked_id: int | None = None


@dataclass
class ReferenceModel:
    """The contract's rules over a list, written to be obviously right, not fast.
    Rows are created in id order, so the oldest row is the lowest id, and the
    list stays in id order. `merged` holds the (email, phone) of every merge
    whose two values have not been forgotten since."""

    rows: list[ModelRow] = field(default_factory=list)
    merged: set[tuple[str, str]] = field(default_factory=set)
    next_id: int = 1

    def identify(self, email: str | None, phone: str | None) -> dict[str, Any]:
        matched = [
            row
            for row in self.rows
            if (email is not None and row.email == email)
            or (phone is not None and row.phone == phone)
        ]
        primaries = sorted({row.linked_id or row.id for row in matched})
        if not primaries:
            return self.view(self.add(email, phone, None))
        oldest, *newer = primaries
        if newer:
            self.merged.add((email, phone))  # type: ignore[arg-type]
        for row in self.rows:
            if row.id in newer or row.linked_id in newer:
                row.linked_id = oldest
        cluster = self.cluster(oldest)
        if (email is not None and email not in [r.email for r in cluster]) or (
            phone is not None and phone not in [r.phone for r in cluster]
        ):
            self.add(email, phone, oldest)
        return self.view(oldest)

    def add(self, email: str | None, phone: str | None, linked_id: int | None) -> int:
        self.rows.append(ModelRow(self.next_id, email, phone, linked_id))
        self.next_id += 1
        return self.next_id - 1

    def customer_of(self, contact_id: int) -> list[ModelRow]:
        """The rows of the customer of `contact_id`; LookupError if none."""
        (row,) = [r for r in self.rows if r.id == contact_id] or [None]
        if row is None:
            raise LookupError(contact_id)
        return self.cluster(row.linked_id or row.id)

    def detach(self, contact_id: int, kind: str, value: str) -> list[dict[str, Any]]:
        """Take the value away, then regroup what remains by shared values and
        merges whose two values remain. ValueError if the customer lacks it."""
        members = self.customer_of(contact_id)
        if value not in [getattr(row, kind) for row in members]:
            raise ValueError(value)
        for row in members:
            if getattr(row, kind) == value:
                other = row.phone if kind == "email" else row.email
                if other is None:
                    self.rows.remove(row)
                else:
                    setattr(row, kind, None)
        self.forget(kind, value)
        groups = [[row] for row in members if row in self.rows]
        joined = True
        while joined:
            joined = False
            for a, b in itertools.combinations(groups, 2):
                if any(self.joins(x, y) for x in a for y in b):
                    groups.remove(b)
                    a.extend(b)
                    joined = True
                    break
        for group in groups:
            primary = min(row.id for row in group)
            for row in group:
                row.linked_id = None if row.id == primary else primary
        return [
            self.view(min(r.id for r in group))
            for group in sorted(groups, key=lambda g: min(r.id for r in g))
        ]

    def joins(self, x: ModelRow, y: ModelRow) -> bool:
        return (
            (x.email is not None and x.email == y.email)
            or (x.phone is not None and x.phone == y.phone)
            or (x.email, y.phone) in self.merged
            or (y.email, x.phone) in self.merged
        )

    def erase(self, contact_id: int) -> tuple[list[int], set[tuple[str, str]]]:
        """Delete the customer's rows; their ids and the values forgotten."""
        members = self.customer_of(contact_id)
        values = set()
        for row in members:
            self.rows.remove(row)
            for kind in ("email", "phone"):
                if getattr(row, kind) is not None:
                    values.add((kind, getattr(row, kind)))
                    self.forget(kind, getattr(row, kind))
        return [row.id for row in members], values

    def forget(self, kind: str, value: str) -> None:
        index = 0 if kind == "email" else 1
        self.merged = {pair for pair in self.merged if pair[index] != value}

    def cluster(self, primary_id: int) -> list[ModelRow]:
        return [r for r in self.rows if primary_id in (r.id, r.linked_id)]

    def view(self, primary_id: int) -> dict[str, Any]:
        cluster = self.cluster(primary_id)
        primary = cluster[0]
        emails: list[str] = []
        phones: list[str] = []
        for row in cluster:
            if row.email is not None and row.email not in emails:
                emails.append(row.email)
            if row.phone is not None and row.phone not in phones:
                phones.append(row.phone)
        return {
            "primaryContactId": primary.id,
            "primaryContatctId": primary.id,
            "emails": emails,
            "phoneNumbers": phones,
            "secondaryContactIds": [row.id for row in cluster[1:]],
        }


class LimitedModel:
    """The reference model with the limits, written from the contract's words:
    a request that would give a customer more than max_values values, or a
    value more than max_partners partners (in rows or merges), is served as
    if sent without its lower-priority value, and says which limit it met
    (the values one when both would break)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.model = ReferenceModel()

    def identify(
        self, email: str | None, phone: str | None
    ) -> tuple[dict[str, object], list[dict[str, str]]]:
        trial = copy.deepcopy(self.model)
        answer = trial.identify(email, phone)
        broken = None
        if email is not None and phone is not None:
            broken = self.breaks(trial, email, phone)
        if broken is None:
            self.model = trial
            return answer, []
        dropped = self.limits.priority[1]
        kept_email = None if dropped == "email" else email
        kept_phone = None if dropped == "phoneNumber" else phone
        answer = self.model.identify(kept_email, kept_phone)
        return answer, [{"field": dropped, "reason": "limit", "limit": broken}]

    @staticmethod
    def primaries(model: ReferenceModel) -> int:
        return len({row.linked_id or row.id for row in model.rows})

    def breaks(self, trial: ReferenceModel, email: str, phone: str) -> str | None:
        """The name of the limit `trial` (the model after the request) breaks."""
        merged = self.primaries(trial) < self.primaries(self.model)
        if not merged and len(trial.rows) == len(self.model.rows):
            return None
        cluster = next(
            r.linked_id or r.id
            for r in trial.rows
            if r.email == email or r.phone == phone
        )
        members = trial.cluster(cluster)
        values = {r.email for r in members} | {r.phone for r in members}
        if len(values - {None}) > self.limits.max_values:
            return "MAX_VALUES_PER_CUSTOMER"
        rows = self.model.rows
        phones = {r.phone for r in rows if r.email == email and r.phone}
        phones |= {p for e, p in self.model.merged if e == email}
        emails = {r.email for r in rows if r.phone == phone and r.email}
        emails |= {e for e, p in self.model.merged if p == phone}
        limit = self.limits.max_partners
        if (phone not in phones and len(phones) >= limit) or (
            email not in emails and len(emails) >= limit
        ):
            return "MAX_PARTNERS_PER_VALUE"
        return None


START = datetime(2026, 11, 30, tzinfo=UTC)


class Table:
    """Contact rows and ledger events in memory, changed as store.apply_batch would."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.rows: dict[int, Member] = {}
        self.events: list[LedgerEvent] = []
        self.merged: set[tuple[str | None, str | None]] = set()
        self.clock = START
        self.limits = limits
        self.next_id = 1

    def partners(self, email: str | None, phone: str | None) -> Partners:
        return Partners(
            phones_of_email=frozenset(p for e, p in self.merged if e == email and p),
            emails_of_phone=frozenset(e for e, p in self.merged if p == phone and e),
        )

    def touched(self, email: str | None, phone: str | None) -> list[Member]:
        hits = {
            row.customer_id
            for row in self.rows.values()
            if (email is not None and row.email == email)
            or (phone is not None and row.phone_number == phone)
        }
        return [row for row in self.rows.values() if row.customer_id in hits]

    def identify(self, email: str | None, phone: str | None) -> Decision:
        self.clock += timedelta(seconds=1)
        decision = decide(
            self.touched(email, phone),
            email=email,
            phone_number=phone,
            now=self.clock,
            limits=self.limits,
            partners=self.partners(email, phone),
        )
        self.apply(decision)
        return decision

    def apply(self, decision: Decision) -> None:
        for row_id in decision.relink:
            self.rows[row_id] = replace(
                self.rows[row_id],
                linked_id=decision.primary_id,
                link_precedence="secondary",
            )
        if decision.promote is not None:
            self.rows[decision.promote] = replace(
                self.rows[decision.promote], linked_id=None, link_precedence="primary"
            )
        new_id = None
        if decision.insert is not None:
            new_id = self.next_id
            self.next_id += 1
            self.rows[new_id] = member(new_id, decision.insert)
        identity, events = decision.settle(new_id)
        self.record(events)

    def record(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.type is EventType.MERGED:
                self.merged.add((event.email, event.phone_number))
            self.events.append(
                LedgerEvent(
                    len(self.events) + 1,
                    event.type.value,
                    event.customer_id,
                    list(event.contact_ids),
                    event.absorbed_customer_id,
                )
            )

    def live(self) -> list[Row]:
        return [
            Row(
                r.id,
                r.email,
                r.phone_number,
                r.linked_id,
                r.link_precedence,
                r.created_at,
            )
            for r in sorted(self.rows.values(), key=lambda r: r.id)
        ]


def member(new_id: int, row: NewRow) -> Member:
    precedence = "primary" if row.linked_id is None else "secondary"
    return Member(
        new_id, row.email, row.phone_number, row.linked_id, precedence, row.created_at
    )
