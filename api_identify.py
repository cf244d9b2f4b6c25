"""POST /identify: match an order's email and phone to a customer, creating
or merging rows as the rules decide (writes.identify)."""

from typing import Any

from flask import Blueprint, current_app, g, request

import observability
import writes
from edge import connect, contact_json, with_ignored
from validation import check_email, parse_identify

identify_api = Blueprint("identify", __name__)


@identify_api.post("/identify")
def identify() -> dict[str, Any]:
    email, phone_number = parse_identify(request.get_json())
    with connect() as connection:
        served = writes.identify(
            connection,
            email=email,
            phone_number=phone_number,
            request_id=g.request_id,
            guard=current_app.config["GUARD"],
            check_email=check_email,
        )
    observability.record_identity(served)
    return with_ignored({"contact": contact_json(served.identity)}, served.ignored)
