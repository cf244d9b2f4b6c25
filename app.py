"""The HTTP edge: the Flask app, its routes, and errors as problem documents."""

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    jsonify,
    request,
)
from flask_migrate import Migrate
from flask_swagger_ui import get_swaggerui_blueprint  # type: ignore[import-untyped]
from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    HTTPException,
    InternalServerError,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnprocessableEntity,
)
from werkzeug.routing import IntegerConverter

import audit
import correct
import faults
import graph
import guard
import observability
import purge
import reads
import schema
import settings
import support
import transfer
import writes
from auth import require_api_key
from console_page import console
from locks import LostRace
from models import db, engine_options, prepare_engine
from reads import NothingUsable
from reconcile import Identity, Ignored
from validation import (
    MAX_BODY_BYTES,
    MAX_ID,
    InvalidInput,
    check_email,
    parse_blocked_page,
    parse_blocked_value,
    parse_detach,
    parse_erase,
    parse_holders,
    parse_identify,
    parse_no_input,
    parse_page,
)

OPENAPI: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent / "openapi.yaml").read_text()
)

api = Blueprint("api", __name__)


class JSONRequest(Request):
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


migrate = Migrate(render_as_batch=True)


class AsciiIdConverter(IntegerConverter):
    """A whole number of ASCII digits: werkzeug's own also takes any Unicode
    digit, so /customers/１ served customer 1."""

    regex = r"[0-9]+"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.url_map.converters["int"] = AsciiIdConverter
    app.request_class = JSONRequest
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.database_url()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["API_KEYS"] = settings.api_keys()
    app.config["PROMETHEUS_MULTIPROC_DIR"] = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    app.config["SQLITE_SYNCHRONOUS"] = settings.sqlite_synchronous()
    app.config["GUARD"] = guard.guard_from_env()
    app.config.update(config or {})
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        engine_options(
            app.config["SQLALCHEMY_DATABASE_URI"],
            pool_size=settings.database_pool_size(),
        ),
    )
    db.init_app(app)
    migrate.init_app(app, db)
    with app.app_context():
        prepare_engine(db.engine, synchronous=app.config["SQLITE_SYNCHRONOUS"])
    observability.init_app(app)
    app.before_request(require_api_key)
    app.register_blueprint(api)
    app.register_blueprint(console)
    app.register_blueprint(
        get_swaggerui_blueprint(
            "/docs",
            "/openapi.json",
            config={
                "app_name": "Identity reconciliation",
                "persistAuthorization": True,
            },
        )
    )
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
    audit.contacts.add_command(purge.purge_command)
    audit.contacts.add_command(transfer.import_command)
    audit.contacts.add_command(transfer.export_command)
    app.cli.add_command(audit.contacts)
    app.cli.add_command(support.customers)
    return app


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


@api.post("/identify")
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


@api.post("/customers/lookup")
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


@api.get("/blocked-values")
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


@api.post("/blocked-values")
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


@api.delete("/blocked-values/<value_id>")
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


@api.post("/customers/holders")
def customer_holders() -> dict[str, Any]:
    """The customers holding an email or a phone, even a blocked one (which
    lookup refuses), to detach it from them; never writes."""
    field, value = parse_holders(request.get_json())
    with connect() as connection:
        found = reads.holders(connection, field=field, value=value)
    observability.record_customers(found)
    return {"contacts": [contact_json(identity) for identity in found]}


@api.get("/customers/<int:contact_id>")
def get_customer(contact_id: int) -> dict[str, Any]:
    if contact_id > MAX_ID:
        raise no_contact(contact_id)
    with connect() as connection:
        found = reads.customer(connection, contact_id)
    if found is None:
        raise no_contact(contact_id)
    observability.record_customers([found])
    return {"contact": contact_json(found)}


@api.get("/customers/<int:contact_id>/history")
def customer_history(contact_id: int) -> dict[str, Any]:
    after, limit = parse_page(request.args)
    if contact_id > MAX_ID:
        raise no_contact(contact_id)
    with connect() as connection:
        page = reads.history(connection, contact_id, after=after, limit=limit)
    if page is None:
        raise no_contact(contact_id)
    return {"events": page.events, "next": page.next}


@api.get("/customers/<int:contact_id>/graph")
def customer_graph(contact_id: int) -> dict[str, Any]:
    """The customer's rows, values and evidence, its bridges marked."""
    if contact_id > MAX_ID:
        raise no_contact(contact_id)
    with connect() as connection:
        found = graph.read(connection, contact_id)
    if found is None:
        raise no_contact(contact_id)
    return graph.document(found)


@api.get("/events")
def events() -> dict[str, Any]:
    after, limit = parse_page(request.args)
    with connect() as connection:
        page = reads.feed(connection, after=after, limit=limit)
    return {"events": page.events, "next": page.next}


@api.post("/customers/<int:contact_id>/detach")
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


@api.delete("/customers/<int:contact_id>")
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
    # would say that nothing changed. The operator purges (README).
    if remains is not None:
        current_app.logger.warning("copies of erased values remain: %s", remains)
    return {
        "erasedContactIds": list(done.deleted),
        "suppressed": len(done.forgotten) if asked.suppress else 0,
        "dryRun": asked.dry_run,
    }


def no_contact(contact_id: int) -> NotFound:
    return NotFound(f"No live contact has the id {contact_id}.")


@api.get("/health")
def health() -> dict[str, str]:
    """Ok when the database answers, holds what this code needs (schema.py),
    can take writes (faults.cannot_write: no row is written), and the
    service's ERASURE_KEY is the one its suppressed values were made with."""
    with connect() as connection:
        unserved = schema.problem(connection) or guard.erasure_key_problem(
            connection, current_app.config["GUARD"]
        )
        if unserved is not None:
            raise ServiceUnavailable(unserved)
        problem = faults.cannot_write(connection)
    if problem is not None:
        raise ServiceUnavailable(
            f"{problem} Requests that write fail until it is fixed."
        )
    return {"status": "ok"}


@api.get("/metrics")
def metrics() -> Response:
    return observability.metrics()


@api.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return OPENAPI


def contact_json(identity: Identity) -> dict[str, Any]:
    return {
        "primaryContactId": identity.primary_id,
        # Compatibility alias: the misspelt key of the original task text.
        "primaryContatctId": identity.primary_id,
        "emails": identity.emails,
        "phoneNumbers": identity.phone_numbers,
        "secondaryContactIds": identity.secondary_ids,
    }


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


app = create_app()
