"""Webhook endpoints: registering, listing, deleting, rotating secrets,
listing attempts and replaying (README: "Following changes: webhooks"), the
policy on where deliveries may go, the signing secrets' encryption at rest,
and the delivery metrics read from the tables at scrape time. Delivering is
delivery.py's, in a process of its own."""

import base64
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Blueprint, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from werkzeug.exceptions import NotFound, ServiceUnavailable, UnprocessableEntity

import ledger
import locks
from models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint, db
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
# How long the secret a rotation replaced keeps signing beside the new one.
ROTATION_GRACE = timedelta(hours=24)
SECRET_PREFIX = "whsec_"
ENDPOINT_MEMBERS = ("url", "eventTypes")
REPLAY_MEMBERS = ("after",)
DELIVERIES_PARAMETERS = ("before", "limit")

webhooks_api = Blueprint("webhooks", __name__)


class Unreachable(Exception):
    """A webhook URL that deliveries may not go to: its host resolves to no
    address, or to one that the policy refuses (private_address)."""


class SecretBox:
    """Encrypts endpoint secrets with a key derived from WEBHOOK_SECRET_KEY
    (HKDF-SHA256), as Fernet tokens: AES-128-CBC with an HMAC-SHA256, so a
    token altered or made with another key does not open."""

    def __init__(self, key: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"identity-reconciliation webhook endpoint secrets",
        ).derive(key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret in clear. Raises InvalidToken when another key sealed it."""
        return self._fernet.decrypt(sealed.encode()).decode()


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells it: whsec_ and 32 random
    bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `address` is one that webhooks never reach unless
    WEBHOOK_ALLOW_PRIVATE=true: private, loopback, link-local, multicast,
    unspecified or reserved (an IPv4 address mapped into IPv6 is judged as
    itself)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )


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


def addresses(parts: SplitResult, *, allow_private: bool) -> list[str]:
    """The addresses of the URL's host that deliveries may connect to, from
    DNS (or the literal address in the URL). Raises Unreachable when there is
    none, or when any of them is private (private_address) and
    `allow_private` is False: a name that also resolves to a private address
    is refused whole."""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Unreachable(f"the host {host[:100]} does not resolve") from None
    resolved = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not resolved:
        raise Unreachable(f"the host {host[:100]} resolves to no address")
    if not allow_private:
        for address in resolved:
            if private_address(ipaddress.ip_address(address.split("%")[0])):
                raise Unreachable(
                    f"the host {host[:100]} resolves to {address}, a private,"
                    " loopback, link-local, multicast or reserved address"
                )
    return resolved


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


def begin(connection: Connection) -> None:
    """Begin a transaction: SQLite's write lock, waited for as every writer
    does (locks.begin_immediate); PostgreSQL's BEGIN (connections run in
    autocommit mode)."""
    if connection.dialect.name == "sqlite":
        locks.begin_immediate(connection)
    else:
        connection.exec_driver_sql("BEGIN")


def _box() -> SecretBox:
    key = current_app.config.get("WEBHOOK_SECRET_KEY")
    if key is None:
        raise ServiceUnavailable(
            "Webhooks need the service's WEBHOOK_SECRET_KEY, the key their signing"
            f" secrets are encrypted with, and it is not set. {NOTHING_CHANGED}"
        )
    return SecretBox(key)


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


_ENDPOINT = select(*WebhookEndpoint.__table__.columns)


def _endpoint(connection: Connection, endpoint_id: int) -> Any:
    if endpoint_id > MAX_ID:
        raise _no_endpoint(endpoint_id)
    row = connection.execute(_ENDPOINT.where(WebhookEndpoint.id == endpoint_id)).first()
    if row is None:
        raise _no_endpoint(endpoint_id)
    return row


def _no_endpoint(endpoint_id: int) -> NotFound:
    return NotFound(f"No webhook endpoint has the id {endpoint_id}.")


@webhooks_api.post("/webhooks")
def create_endpoint() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Register a receiver; the answer holds its secret, shown only here."""
    asked = parse_endpoint(request.args, request.get_json())
    box = _box()
    try:
        addresses(
            urlsplit(asked.url),
            allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE"],
        )
    except Unreachable as error:
        raise UnprocessableEntity(
            f"Webhooks cannot reach that url: {error}. Set WEBHOOK_ALLOW_PRIVATE="
            f"true to reach private addresses. {NOTHING_CHANGED}"
        ) from None
    secret = new_secret()
    now = datetime.now(UTC)
    with db.engine.connect() as connection:
        start = ledger.horizon(connection)
        begin(connection)
        endpoint_id = connection.execute(
            insert(WebhookEndpoint)
            .values(
                url=asked.url,
                event_types=asked.event_types,
                secret=box.seal(secret),
                handed_over=start,
                created_at=now,
            )
            .returning(WebhookEndpoint.id)
        ).scalar_one()
        connection.commit()
        created = _endpoint(connection, endpoint_id)
    answer = endpoint_json(created, now) | {"secret": secret}
    return answer, 201, {"Location": f"/webhooks/{endpoint_id}"}


@webhooks_api.get("/webhooks")
def list_endpoints() -> dict[str, Any]:
    _refuse_unknown(request.args, (), "GET /webhooks", "query parameter")
    now = datetime.now(UTC)
    with db.engine.connect() as connection:
        rows = connection.execute(_ENDPOINT.order_by(WebhookEndpoint.id)).all()
        return {"webhooks": [endpoint_json(row, now) for row in rows]}


@webhooks_api.delete("/webhooks/<int:endpoint_id>")
def delete_endpoint(endpoint_id: int) -> tuple[str, int]:
    """Remove an endpoint, its deliveries still to make and its attempts."""
    parse_no_input(request.args, request.get_data(), "DELETE /webhooks/{id}")
    if endpoint_id > MAX_ID:
        raise _no_endpoint(endpoint_id)
    with db.engine.connect() as connection:
        begin(connection)
        for table in (WebhookAttempt, WebhookDelivery):
            connection.execute(delete(table).where(table.endpoint_id == endpoint_id))
        deleted = connection.execute(
            delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
        ).rowcount
        connection.commit()
    if not deleted:
        raise _no_endpoint(endpoint_id)
    return "", 204


@webhooks_api.post("/webhooks/<int:endpoint_id>/rotate-secret")
def rotate_secret(endpoint_id: int) -> dict[str, Any]:
    """A new secret, shown only here; the one it replaces keeps signing
    beside it for ROTATION_GRACE (and one replaced before is dropped)."""
    parse_no_input(
        request.args, request.get_data(), "POST /webhooks/{id}/rotate-secret"
    )
    box = _box()
    secret = new_secret()
    now = datetime.now(UTC)
    with db.engine.connect() as connection:
        current = _endpoint(connection, endpoint_id)
        begin(connection)
        changed = connection.execute(
            update(WebhookEndpoint)
            .where(
                WebhookEndpoint.id == endpoint_id,
                WebhookEndpoint.secret == current.secret,
            )
            .values(
                secret=box.seal(secret),
                previous_secret=current.secret,
                previous_secret_until=now + ROTATION_GRACE,
            )
        ).rowcount
        connection.commit()
        if not changed:
            raise UnprocessableEntity(
                "The endpoint's secret was rotated or the endpoint deleted by"
                f" another request meanwhile. {NOTHING_CHANGED}"
            )
        rotated = _endpoint(connection, endpoint_id)
    return endpoint_json(rotated, now) | {"secret": secret}


@webhooks_api.get("/webhooks/<int:endpoint_id>/deliveries")
def list_deliveries(endpoint_id: int) -> dict[str, Any]:
    """The endpoint's attempts, newest first, and how many events wait."""
    before, limit = parse_deliveries_page(request.args)
    query = (
        select(*WebhookAttempt.__table__.columns)
        .where(WebhookAttempt.endpoint_id == endpoint_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(WebhookAttempt.id < before)
    with db.engine.connect() as connection:
        _endpoint(connection, endpoint_id)
        rows = connection.execute(query).all()
        pending = connection.execute(
            select(func.count()).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).scalar_one()
    shown = rows[:limit]
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
            for row in shown
        ],
        "pending": pending,
        "next": shown[-1].id if len(rows) > limit else None,
    }


@webhooks_api.post("/webhooks/<int:endpoint_id>/replay")
def replay(endpoint_id: int) -> tuple[dict[str, Any], int]:
    """Deliver again every event after `after` (that the endpoint takes),
    and enable the endpoint again if a 410 disabled it. Deliveries still to
    make after `after` start their retries afresh."""
    after = parse_replay(request.args, request.get_json())
    now = datetime.now(UTC)
    with db.engine.connect() as connection:
        current = _endpoint(connection, endpoint_id)
        start = min(after, current.handed_over)
        least = func.min if connection.dialect.name == "sqlite" else func.least
        begin(connection)
        connection.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(
                handed_over=least(WebhookEndpoint.handed_over, start),
                disabled_at=None,
                disabled_reason=None,
                retry_at=None,
            )
        )
        connection.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.event_id > start,
            )
        )
        connection.commit()
        replayed = _endpoint(connection, endpoint_id)
    return endpoint_json(replayed, now) | {"replayAfter": after}, 202


class DeliveryMetrics(Collector):
    """The delivery worker's progress, read from the tables at each scrape:
    attempts by outcome (ever), endpoints by state, and per enabled endpoint
    the events not yet delivered and the age of the oldest."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = datetime.now(UTC)
        with self.engine.connect() as connection:
            outcomes = connection.exec_driver_sql(
                "SELECT outcome, count FROM webhook_outcome"
            ).all()
            endpoints = connection.execute(
                select(
                    WebhookEndpoint.id,
                    WebhookEndpoint.handed_over,
                    WebhookEndpoint.disabled_at,
                ).order_by(WebhookEndpoint.id)
            ).all()
            newest = connection.execute(select(func.max(Event.id))).scalar() or 0
            waiting = {
                row.endpoint_id: row
                for row in connection.execute(
                    select(
                        WebhookDelivery.endpoint_id,
                        func.count().label("count"),
                        func.min(WebhookDelivery.event_id).label("oldest"),
                    ).group_by(WebhookDelivery.endpoint_id)
                )
            }
            lags = list(_lags(connection, endpoints, waiting, newest, now))
        deliveries = CounterMetricFamily(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome: delivered, failed (retried"
            " later), gave_up (the last retry failed), gone (410: endpoint"
            " disabled).",
            labels=["outcome"],
        )
        for outcome, count in outcomes:
            deliveries.add_metric([outcome], count)
        yield deliveries
        states = GaugeMetricFamily(
            "webhook_endpoints", "Webhook endpoints, by state.", labels=["state"]
        )
        disabled = sum(1 for row in endpoints if row.disabled_at is not None)
        states.add_metric(["enabled"], len(endpoints) - disabled)
        states.add_metric(["disabled"], disabled)
        yield states
        lag_events = GaugeMetricFamily(
            "webhook_lag_events",
            "Events not yet delivered to an enabled endpoint: past its cursor,"
            " or handed over and waiting.",
            labels=["endpoint"],
        )
        lag_seconds = GaugeMetricFamily(
            "webhook_lag_seconds",
            "Age of the oldest event not yet delivered to an enabled endpoint.",
            labels=["endpoint"],
        )
        for endpoint_id, events, seconds in lags:
            lag_events.add_metric([str(endpoint_id)], events)
            lag_seconds.add_metric([str(endpoint_id)], seconds)
        yield lag_events
        yield lag_seconds


def _lags(
    connection: Connection,
    endpoints: Sequence[Any],
    waiting: dict[int, Any],
    newest: int,
    now: datetime,
) -> Iterable[tuple[int, int, float]]:
    for row in endpoints:
        if row.disabled_at is not None:
            continue
        pending = waiting.get(row.id)
        events = newest - row.handed_over + (pending.count if pending else 0)
        oldest = connection.execute(
            select(func.min(Event.id)).where(Event.id > row.handed_over)
        ).scalar()
        if pending is not None:
            oldest = min(pending.oldest, oldest or pending.oldest)
        at = (
            None
            if oldest is None
            else connection.execute(select(Event.at).where(Event.id == oldest)).scalar()
        )
        yield row.id, events, 0.0 if at is None else (now - at).total_seconds()


def metrics_text(engine: Engine) -> bytes:
    """DeliveryMetrics in Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(DeliveryMetrics(engine))
    return generate_latest(registry)


def open_secrets(box: SecretBox, row: Any, now: datetime) -> list[str]:
    """The secrets that sign for endpoint `row` at `now`: its own, and the
    one it replaced while that one's grace lasts. Raises InvalidToken when
    WEBHOOK_SECRET_KEY is not the key they were sealed with."""
    signing = [box.open(row.secret)]
    until = row.previous_secret_until
    if row.previous_secret and until is not None and until > now:
        signing.append(box.open(row.previous_secret))
    return signing
