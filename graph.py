"""The support console's picture of one customer: its rows, its values and
the evidence that joins them, each value marked when it is a bridge
(correct.bridges: detaching it would split the customer). Read only."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

import correct
import reads
from correct import Evidence
from models import Contact, LegacyLink, OneOf
from models import Event as EventRow
from reconcile import EMAIL, PHONE_NUMBER, EventType, Member, views

_ROWS = reads.customer_query(Contact.updated_at)
# The same merge events as detach's evidence (reads.read_evidence), each one.
_MERGES = (
    select(EventRow.id, EventRow.at, EventRow.email, EventRow.phone_number)
    .where(
        EventRow.type == EventType.MERGED.value,
        OneOf(EventRow.email, "emails"),
        OneOf(EventRow.phone_number, "phones"),
    )
    .order_by(EventRow.id)
)
_LEGACY = select(LegacyLink.contact_id, LegacyLink.customer_id).where(
    OneOf(LegacyLink.contact_id, "ids")
)
KIND = {EMAIL: "email", PHONE_NUMBER: "phoneNumber"}


@dataclass(frozen=True)
class Merge:
    """A merge event: the only record that its two values were seen together."""

    id: int
    at: datetime
    email: str
    phone_number: str


@dataclass(frozen=True)
class Graph:
    """A customer's live rows (with each one's updatedAt), the merge events
    whose two values it holds, its rows' legacy links, and its bridges."""

    rows: tuple[Member, ...]
    updated: dict[int, datetime]
    merges: tuple[Merge, ...]
    legacy: frozenset[tuple[int, int]]
    bridges: frozenset[tuple[str, str]]


def read(connection: Connection, contact_id: int) -> Graph | None:
    """The graph of the customer that live contact `contact_id` belongs to,
    or None. Three statements, each through an index by the customer's ids
    or values: the cost is the customer's size, not the table's."""
    found = connection.execute(_ROWS, {"contact_id": contact_id}).all()
    if not found:
        return None
    rows = tuple(Member(*row[:6]) for row in found)
    emails = sorted({row.email for row in rows if row.email is not None})
    phones = sorted({row.phone_number for row in rows if row.phone_number})
    merges: tuple[Merge, ...] = ()
    if emails and phones:
        merges = tuple(
            Merge(event_id, at, email, phone)
            for event_id, at, email, phone in connection.execute(
                _MERGES, {"emails": emails, "phones": phones}
            )
            if email and phone
        )
    legacy = frozenset(
        (contact, linked)
        for contact, linked in connection.execute(
            _LEGACY, {"ids": [row.id for row in rows]}
        )
    )
    evidence = Evidence(
        merged=frozenset((merge.email, merge.phone_number) for merge in merges),
        legacy=legacy,
    )
    return Graph(
        rows=rows,
        updated={row[0]: row[6] for row in found},
        merges=merges,
        legacy=legacy,
        bridges=correct.bridges(rows, evidence),
    )


def document(graph: Graph) -> dict[str, Any]:
    """The JSON of GET /customers/{id}/graph (docs/api.md)."""
    rows = graph.rows
    values = {
        field: sorted({v for row in rows if (v := correct.value_of(row, field))})
        for field in (EMAIL, PHONE_NUMBER)
    }
    node_of = {
        (field, value): f"{'e' if field == EMAIL else 'p'}{index}"
        for field in (EMAIL, PHONE_NUMBER)
        for index, value in enumerate(values[field], start=1)
    }
    live = {row.id for row in rows}
    elsewhere = sorted({linked for _, linked in graph.legacy} - live)
    nodes: list[dict[str, Any]] = [
        {
            "id": f"c{row.id}",
            "kind": "contact",
            "contactId": row.id,
            "live": True,
            "linkPrecedence": row.link_precedence,
            "createdAt": _stamp(row.created_at),
            "updatedAt": _stamp(graph.updated[row.id]),
        }
        for row in rows
    ]
    nodes += [
        {
            "id": f"c{contact_id}",
            "kind": "contact",
            "contactId": contact_id,
            "live": False,
        }
        for contact_id in elsewhere
    ]
    nodes += [
        {
            "id": node_of[field, value],
            "kind": KIND[field],
            "value": value,
            "bridge": (field, value) in graph.bridges,
        }
        for field in (EMAIL, PHONE_NUMBER)
        for value in values[field]
    ]
    edges: list[dict[str, Any]] = [
        {"kind": "holds", "source": f"c{row.id}", "target": node_of[field, value]}
        for row in rows
        for field in (EMAIL, PHONE_NUMBER)
        if (value := correct.value_of(row, field)) is not None
    ]
    edges += [
        {
            "kind": "merged",
            "source": node_of[EMAIL, merge.email],
            "target": node_of[PHONE_NUMBER, merge.phone_number],
            "eventId": merge.id,
            "at": _stamp(merge.at),
        }
        for merge in graph.merges
    ]
    edges += [
        {"kind": "legacyLink", "source": f"c{contact}", "target": f"c{linked}"}
        for contact, linked in sorted(graph.legacy)
    ]
    return {"customerId": _customer_id(rows), "nodes": nodes, "edges": edges}


def _customer_id(rows: Sequence[Member]) -> int:
    return views(rows)[0].primary_id


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
