"""Correcting a customer: POST /customers/{id}/detach takes an email or a
phone away from it and regroups the rest; DELETE /customers/{id} erases it,
every row and every copy of its values in the ledger (writes.detach and
writes.erase)."""

from typing import Any

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import UnprocessableEntity

import correct
import observability
import writes
from edge import connect, contact_json, no_contact
from validation import MAX_ID, parse_detach, parse_erase

corrections_api = Blueprint("corrections", __name__)


@corrections_api.post("/customers/<int:contact_id>/detach")
def detach_value(contact_id: int) -> dict[str, Any]:
    """Take an email or a phone away from a customer and regroup the rest."""
    asked = parse_detach(request.args, request.get_json())
    if contact_id > MAX_ID:
        raise no_contact(contact_id)

    with connect() as connection:
        try:
            done, retries = writes.detach(
                connection,
                contact_id,
                field=asked.field,
                value=asked.value,
                request_id=g.request_id,
                block=asked.block,
                dry_run=asked.dry_run,
                reason=asked.reason,
            )
        except correct.NotHeld:
            raise UnprocessableEntity(
                f"Customer {contact_id} holds no such {asked.field}. Nothing was"
                " changed."
            ) from None
    if done is None:
        raise no_contact(contact_id)
    observability.record_correction(
        "detach", done, dry_run=asked.dry_run, retries=retries
    )
    return {
        "contacts": [contact_json(identity) for identity in done.customers],
        "dryRun": asked.dry_run,
    }


@corrections_api.delete("/customers/<int:contact_id>")
def erase_customer(contact_id: int) -> dict[str, Any]:
    """Erase a customer: every row, every copy of its values in the ledger."""
    asked = parse_erase(request.args, request.get_data())
    protection = current_app.config["GUARD"]
    if asked.suppress and protection.erasure_key is None:
        raise UnprocessableEntity(
            "suppress needs the service's ERASURE_KEY, the secret that suppressed"
            " values are hashed with, and it is not set. Nothing was erased."
        )
    if contact_id > MAX_ID:
        raise no_contact(contact_id)

    with connect() as connection:
        done, retries, remains = writes.erase(
            connection,
            contact_id,
            request_id=g.request_id,
            guard=protection,
            suppress=asked.suppress,
            dry_run=asked.dry_run,
            reason=asked.reason,
        )
    if done is None:
        raise no_contact(contact_id)
    observability.record_correction(
        "erase", done, dry_run=asked.dry_run, retries=retries
    )
    # The erasure is committed whatever became of the files: an error answer
    # would say that nothing changed. The operator purges (flask contacts purge).
    if remains is not None:
        current_app.logger.warning("copies of erased values remain: %s", remains)
    return {
        "erasedContactIds": list(done.deleted),
        "suppressed": len(done.forgotten) if asked.suppress else 0,
        "dryRun": asked.dry_run,
    }
