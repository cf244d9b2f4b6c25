"""What every resource module of the HTTP edge (the api_*.py blueprints)
shares: a request's database connection (connect), the request class that
holds bodies to the size limit and says what is wrong with bad JSON
(JSONRequest), the ASCII-only id converter (AsciiIdConverter), and the JSON
shapes answers reuse (contact_json, with_ignored, ignored_json) and the 404 of
an unknown customer (no_contact)."""

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from flask import Request
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

import faults
import observability
from models import db
from reconcile import Identity, Ignored


class JSONRequest(Request):
    """The app's request class: a body over MAX_CONTENT_LENGTH is refused with
    or without Content-Length, and bad JSON is a 400 that says what is wrong."""

    @property  # type: ignore[misc]
    def max_content_length(self) -> int | None:  # type: ignore[override]
        """One byte over the limit for a body without Content-Length (chunked).

        werkzeug stops reading such a body at the limit and hands on what it
        read, so a longer one would be cut and parsed; reading one byte more
        lets get_data() tell it from one exactly at the limit, and refuse it."""
        limit = super().max_content_length
        if limit is None or self.content_length is not None:
            return limit
        return limit + 1

    def get_data(self, *args: Any, **kwargs: Any) -> Any:
        data = super().get_data(*args, **kwargs)
        limit = super().max_content_length
        if limit is not None and len(data) > limit:
            raise RequestEntityTooLarge()
        return data

    def get_json(self, *args: Any, **kwargs: Any) -> Any:
        """The body's JSON; too deeply nested is bad JSON too, not a crash."""
        try:
            return super().get_json(*args, **kwargs)
        except RecursionError:
            observability.record_rejection("invalid_json")
            raise BadRequest("The body is not valid JSON: nested too deeply.") from None

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        """Say what is wrong with the JSON; Flask says it only in debug mode.

        `e` is None when the Content-Type is not JSON: that stays a 415."""
        if e is None:
            return super().on_json_loading_failed(e)
        observability.record_rejection("invalid_json")
        raise BadRequest(f"The body is not valid JSON: {e}")


class AsciiIdConverter(IntegerConverter):
    """A whole number of ASCII digits: werkzeug's own also takes any Unicode
    digit, so /customers/１ served customer 1."""

    regex = r"[0-9]+"


@contextmanager
def connect() -> Iterator[Connection]:
    """A pooled connection for one request. One that met a read-only, full or
    failing SQLite file is discarded instead of pooled again: it would keep
    failing after the file is fixed, until the workers were restarted."""
    with db.engine.connect() as connection:
        try:
            yield connection
        except (sqlite3.Error, DBAPIError) as error:
            if faults.broken(error):
                connection.invalidate()
            raise


def contact_json(identity: Identity) -> dict[str, Any]:
    return {
        "primaryContactId": identity.primary_id,
        # Compatibility alias: the misspelt key of the original task text.
        "primaryContatctId": identity.primary_id,
        "emails": identity.emails,
        "phoneNumbers": identity.phone_numbers,
        "secondaryContactIds": identity.secondary_ids,
    }


def with_ignored(answer: dict[str, Any], ignored: Sequence[Ignored]) -> dict[str, Any]:
    """The answer with what the request's values were ignored for, if any."""
    if ignored:
        answer["ignored"] = ignored_json(ignored)
    return answer


def ignored_json(ignored: Sequence[Ignored]) -> list[dict[str, str]]:
    """Each ignored value's field and reason, and for `limit`, which limit."""
    return [
        {"field": item.field, "reason": item.reason}
        | ({"limit": item.limit} if item.limit else {})
        for item in ignored
    ]


def no_contact(contact_id: int) -> NotFound:
    return NotFound(f"No live contact has the id {contact_id}.")
