"""The HTTP edge: the Flask app, its routes, and errors as problem documents."""

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from flask_migrate import Migrate
from flask_swagger_ui import get_swaggerui_blueprint  # type: ignore[import-untyped]
from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    RequestEntityTooLarge,
    ServiceUnavailable,
)

import observability
import settings
from auth import require_api_key
from models import db, engine_options, prepare_engine
from reconcile import Identity, LostRace, reconcile_and_commit
from validation import InvalidInput, parse_identify

MAX_BODY_BYTES = 64 * 1024
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
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


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.request_class = JSONRequest
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["API_KEYS"] = settings.api_keys()
    app.config["PROMETHEUS_MULTIPROC_DIR"] = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    app.config["SQLITE_SYNCHRONOUS"] = settings.sqlite_synchronous()
    app.config.update(config or {})
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        engine_options(
            app.config["SQLALCHEMY_DATABASE_URI"],
            pool_size=int(os.environ.get("DATABASE_POOL_SIZE", "2")),
        ),
    )
    db.init_app(app)
    migrate.init_app(app, db)
    with app.app_context():
        prepare_engine(db.engine, synchronous=app.config["SQLITE_SYNCHRONOUS"])
    observability.init_app(app)
    app.before_request(require_api_key)
    app.register_blueprint(api)
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
    app.register_error_handler(LostRace, database_busy)
    return app


def database_url() -> str:
    """DATABASE_URL, or a SQLite file in the instance folder.

    Hosting platforms still hand out "postgres://", which SQLAlchemy rejects;
    both PostgreSQL spellings are served by psycopg 3."""
    url = os.environ.get("DATABASE_URL", "sqlite:///contacts.db")
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


@api.post("/identify")
def identify() -> dict[str, Any]:
    email, phone_number = parse_identify(request.get_json())
    with db.engine.connect() as connection:
        identity, retries = reconcile_and_commit(
            connection, email=email, phone_number=phone_number
        )
    observability.record_identity(identity, retries)
    return {"contact": contact_json(identity)}


@api.get("/health")
def health() -> dict[str, str]:
    """Ok when the database answers and its schema is at the latest migration."""
    context = MigrationContext.configure(db.session.connection())
    current = set(context.get_current_heads())
    if current != latest_revisions():
        raise ServiceUnavailable(
            f"The database schema is at revision {sorted(current) or 'none'}, not"
            f" {sorted(latest_revisions())}: run `flask --app app db upgrade`."
        )
    return {"status": "ok"}


@cache
def latest_revisions() -> set[str]:
    return set(ScriptDirectory(str(MIGRATIONS)).get_heads())


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


def problem(error: HTTPException) -> Response:
    """Every error as an RFC 9457 problem document; never a page or a trace."""
    status = error.code or 500
    detail = error.description
    if isinstance(error, RequestEntityTooLarge):
        detail = f"The request body must be at most {MAX_BODY_BYTES // 1024} KiB."
    response = jsonify(
        type="about:blank", status=status, title=error.name, detail=detail
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


def database_unavailable(error: DBAPIError) -> Response:
    """503 for a database that cannot serve: unreachable, or its schema not
    migrated. Any other ProgrammingError is a bug: a 500."""
    if schema_missing(error):
        current_app.logger.error("schema not migrated: %s", error.orig)
        return problem(
            ServiceUnavailable(
                "The database schema is not migrated: run `flask --app app db"
                " upgrade`. Nothing was changed."
            )
        )
    if isinstance(error, ProgrammingError):
        current_app.logger.error("database error", exc_info=error)
        return problem(InternalServerError())
    current_app.logger.error("database unavailable: %s", error.orig)
    return problem(
        ServiceUnavailable(
            "The database is unreachable or not ready. Nothing was changed;"
            " try again later."
        )
    )


def schema_missing(error: DBAPIError) -> bool:
    """Whether `error` says a table or column is missing (PostgreSQL's
    42P01 and 42703; SQLite's "no such ...")."""
    if isinstance(error.orig, UndefinedTable | UndefinedColumn):
        return True
    return str(error.orig).startswith(("no such table", "no such column"))


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
