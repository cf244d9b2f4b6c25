"""Operating the service: one JSON log line per request, with emails and phone
numbers masked (masking.py), and Prometheus metrics (docs/operating.md: "Logs",
"Metrics")."""

import logging
import re
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask.logging import default_handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from correct import Correction
from masking import json_formatter, request_line
from reconcile import EventType, Identity, Ignored, Outcome
from writes import Served

# The *_created series say when each series began; nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REQUESTS = Counter("http_requests", "Requests answered.", ["route", "method", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to its response.",
    ["route", "method", "status"],
)
OUTCOMES = Counter(
    "identify_outcomes", "Identify requests served, by outcome.", ["outcome"]
)
MERGES = Counter("identify_merges", "Identify requests that merged customers.")
RETRIES = Counter("identify_race_retries", "Transactions retried after losing a race.")
REJECTIONS = Counter("http_rejected_requests", "Requests refused, by why.", ["reason"])
IGNORED = Counter(
    "identify_ignored_values",
    "Values of identify and lookup requests that were ignored, by why.",
    ["reason"],
)
REFUSED_LINKS = Counter(
    "identify_refused_links", "Pairs of values not linked because of a limit."
)
CORRECTIONS = Counter(
    "customer_corrections",
    "Detaches and erasures applied (dry runs not counted), by operation.",
    ["operation"],
)
SPLITS = Counter("customer_splits", "Customers that a detach split into two or more.")
ERASED_ROWS = Counter(
    "customer_erased_contacts", "Contact rows deleted by detaches and erasures."
)

# Unmatched paths share one label, so scanners cannot grow the metric set.
UNMATCHED_ROUTE = "unmatched"
# A client's request id is kept only as a UUID: any other text can carry
# personal data (`cust_4479000111` holds a phone number), and it is echoed,
# logged and stored in the ledger.
_REQUEST_ID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the sys.stdout of the moment, which test runners replace."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def write_line(self, line: str) -> None:
        """Write a line already formatted, as emit() writes a record's: under
        the handler's lock, and a failed write reported on stderr, never
        raised into the request."""
        with self.lock:  # type: ignore[union-attr]
            try:
                stream = sys.stdout
                stream.write(line + self.terminator)
                stream.flush()
            except Exception:  # noqa: BLE001 - as logging.Handler.emit does
                self.handleError(logging.makeLogRecord({"msg": line}))


HANDLER = StdoutHandler()
HANDLER.setFormatter(json_formatter())


def init_app(app: Flask) -> None:
    """Log every request of `app` as one JSON line on stdout, with its errors,
    and count it in the metrics. Register before any other before_request hook
    so that requests refused there are logged and counted too.

    Flask's own handler is removed: it writes errors, tracebacks and all, to
    the server's error stream (gunicorn's stderr) unmasked."""
    app.logger.removeHandler(default_handler)
    if HANDLER not in app.logger.handlers:
        app.logger.addHandler(HANDLER)
    app.logger.setLevel(logging.INFO)
    app.logger.propagate = False
    app.before_request(_start)
    app.after_request(_finish)


def metrics(extra: bytes = b"") -> Response:
    """Every metric in Prometheus text format, summed over all worker
    processes when PROMETHEUS_MULTIPROC_DIR is set, else of this process;
    then `extra`, metrics read elsewhere (the webhooks' from the database)."""
    registry = REGISTRY
    if current_app.config.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry) + extra, content_type=CONTENT_TYPE_LATEST)


def record_identity(served: Served) -> None:
    """Count an identify request's outcome and note it for its log line."""
    identity = served.identity
    g.identity = identity
    g.absorbed = [
        event.absorbed_customer_id
        for event in served.events
        if event.type is EventType.MERGED
    ]
    OUTCOMES.labels(identity.outcome.value).inc()
    if identity.outcome is Outcome.MERGED:
        MERGES.inc()
    record_ignored(served.ignored)
    if any(event.type is EventType.LINK_REFUSED for event in served.events):
        REFUSED_LINKS.inc()
    if served.retries:
        RETRIES.inc(served.retries)
        g.retries = served.retries


def record_ignored(ignored: Sequence[Ignored]) -> None:
    """Count the values a request ignored, by reason."""
    for item in ignored:
        IGNORED.labels(item.reason).inc()


def record_customers(found: list[Identity]) -> None:
    """Note the customers a read answered, for its log line."""
    g.customer_ids = [identity.primary_id for identity in found]


def record_correction(
    operation: str, done: Correction, *, dry_run: bool, retries: int
) -> None:
    """Count a detach or an erasure and note it for its log line: the former
    customer and the ids of the rows it deleted and the customers it left."""
    g.correction = {
        "operation": operation,
        "customer_id": done.customer_id,
        "deleted_contact_ids": list(done.deleted),
        "dry_run": dry_run,
    }
    g.customer_ids = [identity.primary_id for identity in done.customers]
    if dry_run:
        return
    CORRECTIONS.labels(operation).inc()
    ERASED_ROWS.inc(len(done.deleted))
    if len(done.customers) > 1:
        SPLITS.inc()
    if retries:
        RETRIES.inc(retries)


def record_rejection(reason: str) -> None:
    """Name why the request is refused, for the metrics; otherwise a refusal
    is counted under its status (for example `unsupported_media_type`)."""
    g.rejection = reason


def _start() -> None:
    g.started = time.perf_counter()
    sent = request.headers.get("X-Request-ID", "")
    g.request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    duration = time.perf_counter() - g.started
    route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
    status = str(response.status_code)
    REQUESTS.labels(route, request.method, status).inc()
    LATENCY.labels(route, request.method, status).observe(duration)
    if 400 <= response.status_code < 500:
        reason = g.get("rejection") or HTTPStatus(response.status_code).name
        REJECTIONS.labels(reason.lower()).inc()
    response.headers["X-Request-ID"] = g.request_id
    fields: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "duration_ms": round(duration * 1000, 3),
    }
    # The path is masked like every text (an id of four digits or more looks
    # like a phone number); the ids its route took stay legible as numbers.
    fields |= {
        name: value
        for name, value in (request.view_args or {}).items()
        if isinstance(value, int)
    }
    identity: Identity | None = g.get("identity")
    if identity is not None:
        fields["outcome"] = identity.outcome.value
        fields["primary_contact_id"] = identity.primary_id
        fields["secondary_contact_ids"] = identity.secondary_ids
        fields["retries"] = g.get("retries", 0)
        if g.absorbed:
            fields["absorbed_customer_ids"] = g.absorbed
    if "customer_ids" in g:
        fields["customer_ids"] = g.customer_ids
    if "correction" in g:
        fields.update(g.correction)
    HANDLER.write_line(
        request_line(fields, at=datetime.now(UTC), request_id=g.request_id)
    )
    return response
