"""The Flask app: create_app() reads the settings, sets up the database,
logs, metrics and API keys, registers the HTTP edge's blueprints (one
api_*.py module per resource), the error handlers (errors.py) and the flask
CLI commands."""

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_migrate import Migrate

import audit
import delivery
import errors
import guard
import observability
import purge
import settings
import support
import transfer
from api_blocked import blocked_api
from api_corrections import corrections_api
from api_customers import customers_api
from api_events import events_api
from api_identify import identify_api
from api_service import docs_page, service_api
from auth import require_api_key
from console_page import console
from edge import AsciiIdConverter, JSONRequest
from models import db, engine_options, prepare_engine
from validation import MAX_BODY_BYTES
from webhooks_api import webhooks_api

migrate = Migrate(render_as_batch=True)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.url_map.converters["int"] = AsciiIdConverter
    app.request_class = JSONRequest
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.database_url()
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["API_KEYS"] = settings.api_keys()
    app.config["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics_dir()
    app.config["SQLITE_SYNCHRONOUS"] = settings.sqlite_synchronous()
    app.config["GUARD"] = guard.configured()
    app.config["WEBHOOK_SECRET_KEY"] = settings.webhook_secret_key()
    app.config["WEBHOOK_ALLOW_PRIVATE"] = settings.webhook_allow_private()
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
    for blueprint in (
        identify_api,
        customers_api,
        events_api,
        corrections_api,
        blocked_api,
        webhooks_api,
        service_api,
        console,
        docs_page,
    ):
        app.register_blueprint(blueprint)
    errors.init_app(app)
    audit.contacts.add_command(purge.purge_command)
    audit.contacts.add_command(transfer.import_command)
    audit.contacts.add_command(transfer.export_command)
    app.cli.add_command(audit.contacts)
    app.cli.add_command(support.customers)
    app.cli.add_command(delivery.webhooks_cli)
    return app


app = create_app()
