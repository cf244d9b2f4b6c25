"""Correcting mistakes, as pure functions: detaching a value from a customer
and erasing a customer, decided from the customer's rows and the evidence
that joins them (docs/api.md: "Correcting a customer"). writes.py takes the locks of
identify, reads what they need (reads.read_customer), decides here and applies
the Correction (store.apply_correction) in one transaction."""

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
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
    in `reasons_forgotten` took part in (an erasure's: docs/support.md,
    "What erasure removes and what it keeps"). `customers` is the answer of a detach:
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


# A node of the graph that joins a customer's rows: ("row", contact id), or
# (EMAIL, email) or (PHONE_NUMBER, phone).
Node = tuple[str, object]


def _joins(rows: Sequence[Member], evidence: Evidence) -> Iterator[tuple[Node, Node]]:
    """What joins the rows, as pairs of nodes: each row to the values it
    holds, the two values of each merge pair whose values the rows both hold,
    and each row to the row its legacy link names (which may be a row that is
    gone: such an id still joins the rows linked to it)."""
    ids = {row.id for row in rows}
    for row in rows:
        for field in (EMAIL, PHONE_NUMBER):
            if (held := value_of(row, field)) is not None:
                yield ("row", row.id), (field, held)
    emails = {row.email for row in rows}
    phones = {row.phone_number for row in rows}
    for email, phone in evidence.merged:
        if email in emails and phone in phones:
            yield (EMAIL, email), (PHONE_NUMBER, phone)
    for contact_id, linked_to in evidence.legacy:
        if contact_id in ids:
            yield ("row", contact_id), ("row", linked_to)


def _parts(rows: list[Member], evidence: Evidence) -> list[list[Member]]:
    """The rows grouped by what joins them (_joins)."""
    parent: dict[Node, Node] = {}

    def root(node: Node) -> Node:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for row in rows:
        root(("row", row.id))
    for a, b in _joins(rows, evidence):
        parent[root(a)] = root(b)
    groups: dict[Node, list[Member]] = {}
    for row in rows:
        groups.setdefault(root(("row", row.id)), []).append(row)
    return list(groups.values())


def bridges(rows: Sequence[Member], evidence: Evidence) -> frozenset[tuple[str, str]]:
    """The values, as (field, value), whose detach would leave the rows in
    more than one customer: exactly those for which detach(rows, ...,
    evidence=evidence) answers more than one customer.

    One depth-first walk over _joins (articulation points, Hopcroft and
    Tarjan), so the cost is linear in the rows and their evidence rather than
    one regrouping per value. Detaching a value removes its node, and with it
    the rows that held only that value and their own legacy links (a link to
    such a row still joins at its id): so the link of a row that holds one
    value hangs here from that value, and such a row is not counted in the
    parts that detaching its value leaves."""
    ids = {row.id for row in rows}
    sole: dict[object, Node] = {}
    for row in rows:
        held = [
            (field, kept)
            for field in (EMAIL, PHONE_NUMBER)
            if (kept := value_of(row, field)) is not None
        ]
        if len(held) == 1:
            sole[row.id] = held[0]
    neighbours: dict[Node, list[Node]] = {("row", row.id): [] for row in rows}
    for a, b in _joins(rows, evidence):
        if b[0] == "row" and a[1] in sole:
            a = sole[a[1]]
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)

    walk = _walk(neighbours, ids)
    sole_below: dict[tuple[Node, Node], int] = {}
    sole_of: dict[Node, int] = {}
    for row_id, value in sole.items():
        sole_of[value] = sole_of.get(value, 0) + 1
        node: Node = ("row", row_id)
        if walk.order[value] < walk.order[node] < walk.end[value]:
            child = walk.child_above(value, node)
            sole_below[value, child] = sole_below.get((value, child), 0) + 1

    found: set[tuple[str, str]] = set()
    for node in walk.order:
        if node[0] == "row":
            continue
        survivors = walk.rows_below[walk.root[node]] - sole_of.get(node, 0)
        parts = walk.rows_in_components - 1
        cut_off = 0
        for child in walk.children.get(node, []):
            if walk.low[child] >= walk.order[node]:
                left = walk.rows_below[child] - sole_below.get((node, child), 0)
                cut_off += left
                parts += left > 0
        parts += walk.root[node] != node and survivors - cut_off > 0
        if parts > 1:
            found.add((node[0], str(node[1])))
    return frozenset(found)


@dataclass
class _Walk:
    """A depth-first walk of a graph: each node's discovery `order`, the
    order after its last descendant (`end`), `low` (the earliest node its
    subtree reaches), its tree `children`, the `root` of its component, and
    the counted rows in its subtree (`rows_below`); `rows_in_components`:
    how many components hold a counted row."""

    order: dict[Node, int]
    end: dict[Node, int]
    low: dict[Node, int]
    children: dict[Node, list[Node]]
    root: dict[Node, Node]
    rows_below: dict[Node, int]
    rows_in_components: int

    def child_above(self, node: Node, descendant: Node) -> Node:
        """The child of `node` whose subtree holds `descendant`."""
        children = self.children[node]
        at = bisect_right(
            [self.order[child] for child in children], self.order[descendant]
        )
        return children[at - 1]


def _walk(neighbours: dict[Node, list[Node]], ids: set[int]) -> _Walk:
    walk = _Walk({}, {}, {}, {}, {}, {}, 0)
    order, low, children, below = walk.order, walk.low, walk.children, walk.rows_below
    for start in neighbours:
        if start in order:
            continue
        order[start] = low[start] = len(order)
        walk.root[start] = start
        stack = [(start, iter(neighbours[start]))]
        while stack:
            node, following = stack[-1]
            for other in following:
                if other not in order:
                    order[other] = low[other] = len(order)
                    walk.root[other] = start
                    children.setdefault(node, []).append(other)
                    stack.append((other, iter(neighbours[other])))
                    break
                if order[other] < low[node]:
                    low[node] = order[other]
            else:
                stack.pop()
                walk.end[node] = len(order)
                counted = node[0] == "row" and node[1] in ids
                below[node] = counted + sum(below[c] for c in children.get(node, ()))
                if stack and low[node] < low[stack[-1][0]]:
                    low[stack[-1][0]] = low[node]
        walk.rows_in_components += below[start] > 0
    return walk


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
