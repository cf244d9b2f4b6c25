"""The service itself rather than its customers: GET /health (whether it can
serve), GET /metrics (Prometheus), GET /openapi.json (openapi.yaml, the API
description) and the docs page at /docs/ that renders it (docs_page)."""

from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, current_app
from flask_swagger_ui import get_swaggerui_blueprint  # type: ignore[import-untyped]
from werkzeug.exceptions import ServiceUnavailable

import faults
import guard
import observability
import schema
import webhooks
from edge import connect
from models import db

OPENAPI: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent / "openapi.yaml").read_text()
)

service_api = Blueprint("service", __name__)

# The docs page: Swagger UI on /openapi.json, its endpoints named swagger_ui.*.
docs_page = get_swaggerui_blueprint(
    "/docs",
    "/openapi.json",
    config={
        "app_name": "Identity reconciliation",
        "persistAuthorization": True,
    },
)


@service_api.get("/health")
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


@service_api.get("/metrics")
def metrics() -> Response:
    return observability.metrics(webhooks.metrics_text(db.engine))


@service_api.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return OPENAPI
