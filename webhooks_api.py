"""The webhook routes (docs/api.md: "Following changes: webhooks"): parse,
call webhooks.py, shape the JSON. Every refusal is a problem document and
changes nothing."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from flask import Blueprint, current_app, request
from werkzeug.exceptions import NotFound, ServiceUnavailable

import webhooks
from edge import connect
from validation import (
    DEFAULT_PAGE,
    MAX_ID,
    MAX_PAGE,
    NOTHING_CHANGED,
    InvalidInput,
    _refuse_unknown,
    event_types,
    parse_no_input,
)

MAX_URL_LENGTH = 2048
ENDPOINT_MEMBERS = ("url", "eventTypes")
REPLAY_MEMBERS = ("after",)
DELIVERIES_PARAMETERS = ("before", "limit")

webhooks_api = Blueprint("webhooks", __name__)


def parse_url(value: Any) -> SplitResult:
    """A webhook URL: a string of at most MAX_URL_LENGTH characters, http or
    https, with a host, without credentials, fragment or white space.
    Raises InvalidInput."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("url must be a non-empty string: the receiver's URL.")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidInput(f"url must be at most {MAX_URL_LENGTH} characters.")
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidInput(
            "url must be ASCII without spaces or control characters (an"
            " international host in its xn-- form)."
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("url must start with https:// or http://.")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidInput("url has a port that is not a number from 1 to 65535.")
    if not parts.hostname:
        raise InvalidInput("url must name a host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "url must not hold a user name or password: receivers verify the"
            " signature instead."
        )
    if parts.fragment or value.endswith("#"):
        raise InvalidInput("url must not have a fragment (#...).")
    return parts


@dataclass(frozen=True)
class NewEndpoint:
    url: str
    event_types: list[str] | None


def parse_endpoint(args: Any, body: Any) -> NewEndpoint:
    """POST /webhooks: no query parameter; a body with `url` (parse_url) and
    optionally `eventTypes`, a non-empty list of event types or null (every
    type), and no other member. Raises InvalidInput."""
    route = "POST /webhooks"
    _refuse_unknown(args, (), route, "query parameter")
    if not isinstance(body, dict):
        raise InvalidInput(f"The body must be a JSON object. {NOTHING_CHANGED}")
    _refuse_unknown(body, ENDPOINT_MEMBERS, route, "body member")
    if "url" not in body:
        raise InvalidInput(f"Send the receiver's url. {NOTHING_CHANGED}")
    url = parse_url(body["url"])
    chosen = body.get("eventTypes")
    if chosen is None:
        return NewEndpoint(url.geturl(), None)
    if not isinstance(chosen, list) or not chosen:
        raise InvalidInput(
            "eventTypes must be a non-empty list of event types, or left out for"
            f" every type. {NOTHING_CHANGED}"
        )
    return NewEndpoint(url.geturl(), event_types(chosen, "eventTypes"))


def parse_replay(args: Any, body: Any) -> int:
    """POST /webhooks/{id}/replay: a body {"after": event id}, nothing else.
    Raises InvalidInput."""
    route = "POST /webhooks/{id}/replay"
    _refuse_unknown(args, (), route, "query parameter")
    if not isinstance(body, dict):
        raise InvalidInput(f"The body must be a JSON object. {NOTHING_CHANGED}")
    _refuse_unknown(body, REPLAY_MEMBERS, route, "body member")
    after = body.get("after")
    if (
        isinstance(after, bool)
        or not isinstance(after, int)
        or not 0 <= after <= MAX_ID
    ):
        raise InvalidInput(
            f"after must be an event id from 0 to {MAX_ID}: the events after it"
            f" are delivered again. {NOTHING_CHANGED}"
        )
    return after


def parse_deliveries_page(args: Any) -> tuple[int | None, int]:
    """(before, limit) of GET /webhooks/{id}/deliveries: `before` an attempt
    id (the `next` of the page before), `limit` 1 to MAX_PAGE. Raises
    InvalidInput."""
    _refuse_unknown(
        args, DELIVERIES_PARAMETERS, "GET /webhooks/{id}/deliveries", "query parameter"
    )
    before, limit = (_number(args, name) for name in DELIVERIES_PARAMETERS)
    if limit is None:
        limit = DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}.")
    return before, limit


def _number(args: Any, name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise InvalidInput(f"{name} must be a whole number.")
    return int(value)


def _stamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_json(row: Any, now: datetime) -> dict[str, Any]:
    """An endpoint as the API shows it: never a secret."""
    grace = row.previous_secret_until
    return {
        "id": row.id,
        "url": row.url,
        "eventTypes": row.event_types,
        "createdAt": _stamp(row.created_at),
        "disabledAt": _stamp(row.disabled_at),
        "disabledReason": row.disabled_reason,
        "previousSecretExpiresAt": _stamp(grace) if grace and grace > now else None,
    }


def _box() -> webhooks.SecretBox:
    key = current_app.config.get("WEBHOOK_SECRET_KEY")
    if key is None:
        raise ServiceUnavailable(
            "Webhooks need the service's WEBHOOK_SECRET_KEY, the key their signing"
            f" secrets are encrypted with, and it is not set. {NOTHING_CHANGED}"
        )
    return webhooks.SecretBox(key)


def _no_endpoint(endpoint_id: int) -> NotFound:
    return NotFound(f"No webhook endpoint has the id {endpoint_id}.")


def _found(row: Any, endpoint_id: int) -> Any:
    if row is None:
        raise _no_endpoint(endpoint_id)
    return row


@webhooks_api.post("/webhooks")
def create_endpoint() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Register a receiver; the answer holds its secret, shown only here."""
    asked = parse_endpoint(request.args, request.get_json())
    box = _box()
    webhooks.addresses(
        urlsplit(asked.url), allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE"]
    )
    now = datetime.now(UTC)
    with connect() as connection:
        row, secret = webhooks.create(
            connection, box, url=asked.url, event_types=asked.event_types, now=now
        )
    answer = endpoint_json(row, now) | {"secret": secret}
    return answer, 201, {"Location": f"/webhooks/{row.id}"}


@webhooks_api.get("/webhooks")
def list_endpoints() -> dict[str, Any]:
    _refuse_unknown(request.args, (), "GET /webhooks", "query parameter")
    now = datetime.now(UTC)
    with connect() as connection:
        rows = webhooks.endpoints(connection)
    return {"webhooks": [endpoint_json(row, now) for row in rows]}


@webhooks_api.delete("/webhooks/<int:endpoint_id>")
def delete_endpoint(endpoint_id: int) -> tuple[str, int]:
    parse_no_input(request.args, request.get_data(), "DELETE /webhooks/{id}")
    with connect() as connection:
        deleted = endpoint_id <= MAX_ID and webhooks.remove(connection, endpoint_id)
    if not deleted:
        raise _no_endpoint(endpoint_id)
    return "", 204


@webhooks_api.post("/webhooks/<int:endpoint_id>/rotate-secret")
def rotate_secret(endpoint_id: int) -> dict[str, Any]:
    parse_no_input(
        request.args, request.get_data(), "POST /webhooks/{id}/rotate-secret"
    )
    box = _box()
    now = datetime.now(UTC)
    with connect() as connection:
        rotated = (
            webhooks.rotate(connection, box, endpoint_id, now=now)
            if endpoint_id <= MAX_ID
            else None
        )
    row, secret = _found(rotated, endpoint_id)
    return endpoint_json(row, now) | {"secret": secret}


@webhooks_api.get("/webhooks/<int:endpoint_id>/deliveries")
def list_deliveries(endpoint_id: int) -> dict[str, Any]:
    """The endpoint's attempts, newest first, and how many events wait."""
    before, limit = parse_deliveries_page(request.args)
    with connect() as connection:
        if endpoint_id <= MAX_ID:
            _found(webhooks.endpoint(connection, endpoint_id), endpoint_id)
        else:
            raise _no_endpoint(endpoint_id)
        page = webhooks.attempts(connection, endpoint_id, before=before, limit=limit)
    return {
        "deliveries": [
            {
                "id": row.id,
                "eventId": row.event_id,
                "attempt": row.attempt,
                "outcome": row.outcome,
                "statusCode": row.status_code,
                "error": row.error,
                "at": _stamp(row.at),
            }
            for row in page.rows
        ],
        "pending": page.pending,
        "next": page.next,
    }


@webhooks_api.post("/webhooks/<int:endpoint_id>/replay")
def replay(endpoint_id: int) -> tuple[dict[str, Any], int]:
    after = parse_replay(request.args, request.get_json())
    now = datetime.now(UTC)
    with connect() as connection:
        row = (
            webhooks.replay(connection, endpoint_id, after=after)
            if endpoint_id <= MAX_ID
            else None
        )
    return endpoint_json(_found(row, endpoint_id), now) | {"replayAfter": after}, 202
