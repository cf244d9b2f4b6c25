"""Every error the HTTP edge answers, in one place: each as an RFC 9457
problem document (application/problem+json), never an HTML page or a trace.
init_app() registers the handlers: HTTP errors (problem), invalid input
(400), a request whose every value was ignored (422), a database that cannot
serve or is not migrated (503; another ProgrammingError is a 500), lost races
(503 with Retry-After), a wrong ERASURE_KEY (503), and a webhook URL that
deliveries may not reach or a secret rotated meanwhile (422)."""

import sqlite3
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify
from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnprocessableEntity,
)

import faults
import guard
import observability
import webhooks
from edge import ignored_json
from locks import LostRace
from models import db
from reads import NothingUsable
from validation import MAX_BODY_BYTES, InvalidInput


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, problem)
    app.register_error_handler(InvalidInput, invalid_input)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(ProgrammingError, database_unavailable)
    # Statements sent straight to the sqlite3 driver (reads.py, store.py, ledger.py)
    # raise its own errors, not SQLAlchemy's.
    app.register_error_handler(sqlite3.OperationalError, database_unavailable)
    app.register_error_handler(LostRace, database_busy)
    app.register_error_handler(NothingUsable, nothing_usable)
    app.register_error_handler(guard.WrongErasureKey, wrong_erasure_key)
    app.register_error_handler(webhooks.Unreachable, webhook_unreachable)
    app.register_error_handler(webhooks.RotatedMeanwhile, webhook_rotated_meanwhile)


def problem(error: HTTPException, extra: Mapping[str, Any] | None = None) -> Response:
    """Every error as an RFC 9457 problem document, with the `extra` members
    its kind adds; never a page or a trace."""
    status = error.code or 500
    detail = error.description
    if isinstance(error, RequestEntityTooLarge):
        detail = f"The request body must be at most {MAX_BODY_BYTES // 1024} KiB."
    response = jsonify(
        type="about:blank",
        status=status,
        title=error.name,
        detail=detail,
        **(extra or {}),
    )
    response.status_code = status
    response.mimetype = "application/problem+json"
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def invalid_input(error: InvalidInput) -> Response:
    observability.record_rejection("invalid_input")
    return problem(BadRequest(str(error)))


def database_unavailable(error: DBAPIError | sqlite3.OperationalError) -> Response:
    """503 for a database that cannot serve: unreachable, or its schema not
    migrated. Any other ProgrammingError is a bug: a 500."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    if schema_missing(cause):
        current_app.logger.error("schema not migrated: %s", cause)
        return problem(
            ServiceUnavailable(
                "The database schema is not migrated: run `flask --app app db"
                " upgrade`. Nothing was changed."
            )
        )
    if isinstance(error, ProgrammingError):
        current_app.logger.error("database error", exc_info=error)
        return problem(InternalServerError())
    current_app.logger.error("database unavailable: %s", cause)
    database = db.engine.url.database if db.engine.dialect.name == "sqlite" else None
    detail = faults.describe(error, database)
    return problem(
        ServiceUnavailable(f"{detail} Nothing was changed; try again later.")
    )


def nothing_usable(error: NothingUsable) -> Response:
    """422: every value was ignored, so there is nothing to match or store."""
    observability.record_ignored(error.ignored)
    reasons = ", ".join(f"{item.field} ({item.reason})" for item in error.ignored)
    return problem(
        UnprocessableEntity(
            f"Every value of the request was ignored: {reasons}. Nothing was"
            " matched or stored."
        ),
        {"ignored": ignored_json(error.ignored)},
    )


def schema_missing(cause: object) -> bool:
    """Whether a driver's error says a table or column is missing
    (PostgreSQL's 42P01 and 42703; SQLite's "no such ...")."""
    if isinstance(cause, UndefinedTable | UndefinedColumn):
        return True
    return str(cause).startswith(("no such table", "no such column"))


def wrong_erasure_key(error: guard.WrongErasureKey) -> Response:
    current_app.logger.error("refused to suppress: %s", error)
    return problem(ServiceUnavailable(f"{error} Nothing was erased."))


def webhook_unreachable(error: webhooks.Unreachable) -> Response:
    """422: a webhook URL that deliveries may not go to (webhooks.addresses)."""
    return problem(
        UnprocessableEntity(
            f"Webhooks cannot reach that url: {error}. Set WEBHOOK_ALLOW_PRIVATE=true"
            " to reach private addresses. Nothing was changed."
        )
    )


def webhook_rotated_meanwhile(_: webhooks.RotatedMeanwhile) -> Response:
    return problem(
        UnprocessableEntity(
            "The endpoint's secret was rotated or the endpoint deleted by another"
            " request meanwhile. Nothing was changed."
        )
    )


def database_busy(error: LostRace) -> Response:
    current_app.logger.error("gave up on a request after lost races: %s", error)
    response = problem(
        ServiceUnavailable(
            "The database is too busy with conflicting requests. Nothing was"
            " changed; try again in a second."
        )
    )
    response.headers["Retry-After"] = "1"
    return response
