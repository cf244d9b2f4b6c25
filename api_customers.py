"""Reading customers, never writing: POST /customers/lookup (by email or
phone, screened), POST /customers/holders (by a value, blocked ones too),
GET /customers/{id}, GET /customers/{id}/history (its events) and
GET /customers/{id}/graph (its rows, values and evidence)."""

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, current_app, request
from sqlalchemy import Connection

import graph
import observability
import reads
from edge import connect, contact_json, no_contact, with_ignored
from validation import (
    MAX_ID,
    check_email,
    parse_holders,
    parse_identify,
    parse_page,
    parse_types,
)

T = TypeVar("T")

customers_api = Blueprint("customers", __name__)


@customers_api.post("/customers/lookup")
def lookup_customers() -> dict[str, Any]:
    """The customers an email or phone belongs to; never writes."""
    email, phone_number = parse_identify(request.get_json())
    with connect() as connection:
        found, ignored = reads.lookup(
            connection,
            email=email,
            phone_number=phone_number,
            guard=current_app.config["GUARD"],
            check_email=check_email,
        )
    observability.record_customers(found)
    observability.record_ignored(ignored)
    contacts = [contact_json(identity) for identity in found]
    return with_ignored({"contacts": contacts}, ignored)


@customers_api.post("/customers/holders")
def customer_holders() -> dict[str, Any]:
    """The customers holding an email or a phone, even a blocked one (which
    lookup refuses), to detach it from them; never writes."""
    field, value = parse_holders(request.get_json())
    with connect() as connection:
        found = reads.holders(connection, field=field, value=value)
    observability.record_customers(found)
    return {"contacts": [contact_json(identity) for identity in found]}


@customers_api.get("/customers/<int:contact_id>")
def get_customer(contact_id: int) -> dict[str, Any]:
    found = _of_customer(
        contact_id, lambda connection: reads.customer(connection, contact_id)
    )
    observability.record_customers([found])
    return {"contact": contact_json(found)}


@customers_api.get("/customers/<int:contact_id>/history")
def customer_history(contact_id: int) -> dict[str, Any]:
    after, limit = parse_page(request.args)
    types = parse_types(request.args)
    page = _of_customer(
        contact_id,
        lambda connection: reads.history(
            connection, contact_id, after=after, limit=limit, types=types
        ),
    )
    return {"events": page.events, "next": page.next}


@customers_api.get("/customers/<int:contact_id>/graph")
def customer_graph(contact_id: int) -> dict[str, Any]:
    """The customer's rows, values and evidence, its bridges marked."""
    found = _of_customer(
        contact_id, lambda connection: graph.read(connection, contact_id)
    )
    return graph.document(found)


def _of_customer(contact_id: int, read: Callable[[Connection], T | None]) -> T:
    """What `read` finds of the customer of live contact `contact_id`: a 404
    when it finds nothing, or when the id is past every stored id."""
    if contact_id > MAX_ID:
        raise no_contact(contact_id)
    with connect() as connection:
        found = read(connection)
    if found is None:
        raise no_contact(contact_id)
    return found
