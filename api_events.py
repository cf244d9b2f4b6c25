"""GET /events: the ledger's feed, every change in order, a page at a time."""

from typing import Any

from flask import Blueprint, request

import reads
from edge import connect
from validation import parse_page, parse_types

events_api = Blueprint("events", __name__)


@events_api.get("/events")
def events() -> dict[str, Any]:
    after, limit = parse_page(request.args)
    types = parse_types(request.args)
    with connect() as connection:
        page = reads.feed(connection, after=after, limit=limit, types=types)
    return {"events": page.events, "next": page.next}
