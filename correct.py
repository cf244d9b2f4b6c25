"""Correcting mistakes, as pure functions: detaching a value from a customer
and erasing a customer, decided from the customer's rows and the evidence
that joins them (README: "Correcting a customer"). writes.py takes the locks of
identify, reads what they need (reads.read_customer), decides here and applies
the Correction (store.apply_correction) in one transaction."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconcile import (
    EMAIL,
    PHONE_NUMBER,
    PRIMARY,
    SECONDARY,
    Event,
    EventType,
    Identity,
    Member,
    oldest,
    views,
)


@dataclass(frozen=True)
class Evidence:
    """What joins a customer's rows besides the values they share.

    `merged`: the (email, phone) pairs of merge events, each the only record
    that the two values were seen together. `legacy`: links that predate the
    ledger and that no shared value explained when it was created, as
    (contact id, id of the primary it was linked to); never undone."""

    merged: frozenset[tuple[str, str]] = frozenset()
    legacy: frozenset[tuple[int, int]] = frozenset()


@dataclass(frozen=True)
class Correction:
    """What one detach or erase changes, and what it answers.

    `deleted` rows go (live and soft-deleted ones); `cleared` rows keep their
    other value and lose `field`; `links` are the rows whose link changes, to
    the primary given, or to none: they become primaries. Every copy in the
    ledger of a value in `forgotten` ((field, value) pairs) becomes null, and
    so does the support reason of every earlier detach that the contact ids
    in `reasons_forgotten` took part in (an erasure's: README, "What erasure
    removes and what it keeps"). `customers` is the answer of a detach:
    every customer its rows now form, ascending id."""

    customer_id: int
    deleted: tuple[int, ...]
    cleared: tuple[int, ...]
    field: str | None
    links: tuple[tuple[int, int | None], ...]
    forgotten: tuple[tuple[str, str], ...]
    events: tuple[Event, ...]
    customers: tuple[Identity, ...]
    reasons_forgotten: tuple[int, ...]


class NotHeld(ValueError):
    """The value to detach is not one the customer holds."""


def value_of(row: Member, field: str) -> str | None:
    return row.email if field == EMAIL else row.phone_number


def detach(
    rows: Sequence[Member],
    retired: Sequence[Member],
    *,
    field: str,
    value: str,
    evidence: Evidence,
    reason: str | None = None,
) -> Correction:
    """Take `value` (an email or a phone, by `field`) away from the customer
    whose live rows are `rows` (the customer's id is their primary's, which
    may be soft-deleted) and whose soft-deleted rows are `retired`.

    Rows that held only the value are deleted; rows that held another value
    keep it. The remaining rows are joined by the values they share, by merge
    events whose two values both remain, and by legacy links; each part that
    nothing joins to another becomes a customer with its oldest row as
    primary. Soft-deleted rows lose the value too; those linked to a deleted
    row are deleted with it.

    Events: `customer.detached` (the rows deleted), then, when the rows fell
    apart, one `customer.split` per part, or, when one part remains under
    another primary, `customer.primary_changed`; each carries `reason`, the
    one support gave. Raises NotHeld when no live row holds the value."""
    if not any(value_of(row, field) == value for row in rows):
        raise NotHeld(field)
    customer_id = rows[0].customer_id
    holders = [row for row in (*rows, *retired) if value_of(row, field) == value]
    gone = {row.id for row in holders if _other(row, field) is None}
    gone |= _linked_to(gone, retired)
    cleared = tuple(row.id for row in holders if row.id not in gone)
    kept = [
        _without(row, field) if value_of(row, field) == value else row
        for row in rows
        if row.id not in gone
    ]
    parts = _parts(kept, evidence)
    links: list[tuple[int, int | None]] = []
    members: list[Member] = []
    for part in parts:
        primary = oldest(part)
        for row in part:
            target = None if row is primary else primary.id
            if row.linked_id != target or _precedence(target) != row.link_precedence:
                links.append((row.id, target))
            members.append(_linked(row, target))
    deleted = tuple(sorted(gone))
    events = [
        Event(EventType.DETACHED, customer_id, deleted, None, None, reason=reason)
    ]
    customers = views(members)
    events += _regrouped(customer_id, customers, reason)
    return Correction(
        customer_id=customer_id,
        deleted=deleted,
        cleared=cleared,
        field=field,
        links=tuple(links),
        forgotten=((field, value),),
        events=tuple(events),
        customers=tuple(customers),
        reasons_forgotten=(),
    )


def erase(
    rows: Sequence[Member], retired: Sequence[Member], *, reason: str | None = None
) -> Correction:
    """Delete every row of the customer whose live rows are `rows`, live or
    soft-deleted, and forget every value they hold, and the reasons of the
    detaches those rows took part in (they may name the person). One
    `customer.erased` event, without values, names the former id and rows,
    with `reason`, the one support gave."""
    customer_id = rows[0].customer_id
    everything = (*rows, *retired)
    deleted = tuple(sorted(row.id for row in everything))
    forgotten = {
        (field, found)
        for row in everything
        for field in (EMAIL, PHONE_NUMBER)
        if (found := value_of(row, field)) is not None
    }
    erased = Event(EventType.ERASED, customer_id, deleted, None, None, reason=reason)
    return Correction(
        customer_id=customer_id,
        deleted=deleted,
        cleared=(),
        field=None,
        links=(),
        forgotten=tuple(sorted(forgotten)),
        events=(erased,),
        customers=(),
        reasons_forgotten=deleted,
    )


def _regrouped(
    customer_id: int, customers: list[Identity], reason: str | None
) -> list[Event]:
    """The events that say where the remaining rows now belong: one split
    per part, or a change of primary when one part has a new one."""
    if len(customers) == 1 and customers[0].primary_id == customer_id:
        return []
    kind = EventType.SPLIT if len(customers) > 1 else EventType.PRIMARY_CHANGED
    return [
        Event(
            kind,
            identity.primary_id,
            (identity.primary_id, *identity.secondary_ids),
            None,
            None,
            previous_customer_id=customer_id,
            reason=reason,
        )
        for identity in customers
    ]


def _parts(rows: list[Member], evidence: Evidence) -> list[list[Member]]:
    """The rows grouped by what joins them: shared values, merge pairs whose
    two values both remain, and legacy links (whose ends may be rows that are
    gone: such an id still joins the rows linked to it)."""
    parent: dict[object, object] = {}

    def root(node: object) -> object:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def join(a: object, b: object) -> None:
        parent[root(a)] = root(b)

    ids = {row.id for row in rows}
    for row in rows:
        root(("row", row.id))
        if row.email is not None:
            join(("row", row.id), (EMAIL, row.email))
        if row.phone_number is not None:
            join(("row", row.id), (PHONE_NUMBER, row.phone_number))
    emails = {row.email for row in rows}
    phones = {row.phone_number for row in rows}
    for email, phone in evidence.merged:
        if email in emails and phone in phones:
            join((EMAIL, email), (PHONE_NUMBER, phone))
    for contact_id, linked_to in evidence.legacy:
        if contact_id in ids:
            join(("row", contact_id), ("row", linked_to))
    groups: dict[object, list[Member]] = {}
    for row in rows:
        groups.setdefault(root(("row", row.id)), []).append(row)
    return list(groups.values())


def _linked_to(gone: set[int], retired: Iterable[Member]) -> set[int]:
    """The soft-deleted rows linked, directly or through each other, to a row
    in `gone`."""
    found: set[int] = set()
    while True:
        more = {
            row.id
            for row in retired
            if row.linked_id in gone | found and row.id not in gone | found
        }
        if not more:
            return found
        found |= more


def _other(row: Member, field: str) -> str | None:
    return row.phone_number if field == EMAIL else row.email


def _without(row: Member, field: str) -> Member:
    return Member(
        row.id,
        None if field == EMAIL else row.email,
        None if field == PHONE_NUMBER else row.phone_number,
        row.linked_id,
        row.link_precedence,
        row.created_at,
    )


def _precedence(target: int | None) -> str:
    return PRIMARY if target is None else SECONDARY


def _linked(row: Member, target: int | None) -> Member:
    return Member(
        row.id,
        row.email,
        row.phone_number,
        target,
        _precedence(target),
        row.created_at,
    )
