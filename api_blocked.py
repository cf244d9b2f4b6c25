"""/blocked-values: the values never matched or stored. GET lists the
built-in rules and the shop's values, POST adds one of the shop's, DELETE
/blocked-values/{id} removes one (guard.py holds the rules and the table's
statements)."""

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, request
from werkzeug.exceptions import Conflict, NotFound

import guard
from edge import connect
from validation import MAX_ID, parse_blocked_page, parse_blocked_value, parse_no_input

blocked_api = Blueprint("blocked", __name__)


@blocked_api.get("/blocked-values")
def list_blocked_values() -> dict[str, Any]:
    """The built-in rules (on the first page only), then a page of the
    shop's values."""
    after, limit = parse_blocked_page(request.args)
    with connect() as connection:
        values, following = guard.list_blocked(connection, after=after, limit=limit)
    builtin = current_app.config["GUARD"].builtin and after == 0
    return {
        "blockedValues": [
            {
                "id": rule.id,
                "builtin": True,
                "field": rule.field,
                "rule": rule.description,
            }
            for rule in (guard.BUILTIN_RULES if builtin else ())
        ]
        + [blocked_json(value) for value in values],
        "next": following,
    }


@blocked_api.post("/blocked-values")
def add_blocked_value() -> tuple[dict[str, Any], int, dict[str, str]]:
    field, value = parse_blocked_value(request.args, request.get_json())
    rule = guard.builtin_rule(field, value)
    if rule is not None and current_app.config["GUARD"].builtin:
        raise Conflict(f"{field} is already blocked by the built-in rule {rule.id}.")
    with connect() as connection:
        added = guard.add_blocked(connection, field, value, now=datetime.now(UTC))
    if added is None:
        raise Conflict(f"That {field} is already a blocked value.")
    return blocked_json(added), 201, {"Location": f"/blocked-values/{added.id}"}


@blocked_api.delete("/blocked-values/<value_id>")
def delete_blocked_value(value_id: str) -> tuple[str, int]:
    parse_no_input(request.args, request.get_data(), "DELETE /blocked-values/{id}")
    if any(rule.id == value_id for rule in guard.BUILTIN_RULES):
        raise Conflict(
            f"{value_id} is a built-in rule and cannot be deleted; set"
            " BUILTIN_BLOCKLIST=off to turn the built-in rules off."
        )
    number = int(value_id) if value_id.isascii() and value_id.isdigit() else None
    with connect() as connection:
        deleted = (
            number is not None
            and number <= MAX_ID
            and guard.delete_blocked(connection, number)
        )
    if not deleted:
        raise NotFound(f"No blocked value has the id {value_id}.")
    return "", 204


def blocked_json(value: guard.Blocked) -> dict[str, Any]:
    return {
        "id": value.id,
        "builtin": False,
        "field": value.field,
        "value": value.value,
        "createdAt": value.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
