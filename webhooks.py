"""Webhook endpoints' storage (registering, deleting, rotating secrets,
attempts, replay), the policy on where deliveries may go, the signing
secrets' encryption at rest, and the delivery metrics read from the tables
at scrape time (docs/api.md: "Following changes: webhooks"). The routes are
webhooks_api.py's; delivering is delivery.py's, in a process of its own."""

import base64
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import SplitResult

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

import locks
import reads
from models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

# How long the secret a rotation replaced keeps signing beside the new one.
ROTATION_GRACE = timedelta(hours=24)
SECRET_PREFIX = "whsec_"


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


def begin(connection: Connection) -> None:
    """Begin a transaction: SQLite's write lock, waited for as every writer
    does (locks.begin_immediate); PostgreSQL's BEGIN (connections run in
    autocommit mode)."""
    if connection.dialect.name == "sqlite":
        locks.begin_immediate(connection)
    else:
        connection.exec_driver_sql("BEGIN")


_ENDPOINT = select(*WebhookEndpoint.__table__.columns)


def endpoint(connection: Connection, endpoint_id: int) -> Any:
    """The endpoint's row (its columns by name), or None."""
    return connection.execute(
        _ENDPOINT.where(WebhookEndpoint.id == endpoint_id)
    ).first()


def endpoints(connection: Connection) -> list[Any]:
    """Every endpoint's row, oldest first."""
    return list(connection.execute(_ENDPOINT.order_by(WebhookEndpoint.id)).all())


def create(
    connection: Connection,
    box: SecretBox,
    *,
    url: str,
    event_types: list[str] | None,
    now: datetime,
) -> tuple[Any, str]:
    """Store an endpoint whose cursor is the feed's horizon (it receives the
    events committed from now on) with a new secret, sealed; commit. Returns
    its row and the secret in clear."""
    secret = new_secret()
    start = reads.horizon(connection)
    begin(connection)
    endpoint_id = connection.execute(
        insert(WebhookEndpoint)
        .values(
            url=url,
            event_types=event_types,
            secret=box.seal(secret),
            handed_over=start,
            created_at=now,
        )
        .returning(WebhookEndpoint.id)
    ).scalar_one()
    connection.commit()
    return endpoint(connection, endpoint_id), secret


def remove(connection: Connection, endpoint_id: int) -> bool:
    """Delete an endpoint, its deliveries still to make and its attempts;
    commit. False when there was none."""
    begin(connection)
    for table in (WebhookAttempt, WebhookDelivery):
        connection.execute(delete(table).where(table.endpoint_id == endpoint_id))
    deleted = connection.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    ).rowcount
    connection.commit()
    return bool(deleted)


class RotatedMeanwhile(Exception):
    """Another request rotated the endpoint's secret (or deleted it) between
    this one's read and its write."""


def rotate(
    connection: Connection, box: SecretBox, endpoint_id: int, *, now: datetime
) -> tuple[Any, str] | None:
    """Give the endpoint a new secret; the one it replaces signs beside it
    for ROTATION_GRACE (one replaced before is dropped); commit. Returns the
    row and the new secret in clear, or None when there is no such endpoint.
    Raises RotatedMeanwhile, having changed nothing."""
    current = endpoint(connection, endpoint_id)
    if current is None:
        return None
    secret = new_secret()
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
        raise RotatedMeanwhile()
    return endpoint(connection, endpoint_id), secret


@dataclass(frozen=True)
class Attempts:
    rows: list[Any]
    pending: int
    next: int | None


def attempts(
    connection: Connection, endpoint_id: int, *, before: int | None, limit: int
) -> Attempts:
    """A page of the endpoint's attempts, newest first (below attempt id
    `before`), and how many of its deliveries wait."""
    query = (
        select(*WebhookAttempt.__table__.columns)
        .where(WebhookAttempt.endpoint_id == endpoint_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit + 1)
    )
    if before is not None:
        query = query.where(WebhookAttempt.id < before)
    rows = connection.execute(query).all()
    pending = connection.execute(
        select(func.count()).where(WebhookDelivery.endpoint_id == endpoint_id)
    ).scalar_one()
    shown = list(rows[:limit])
    return Attempts(shown, pending, shown[-1].id if len(rows) > limit else None)


def replay(connection: Connection, endpoint_id: int, *, after: int) -> Any:
    """Move the endpoint's cursor back to `after` (never forward), drop its
    deliveries waiting after that (they are handed over again, their retries
    afresh) and enable it again; commit. Returns its row, or None when there
    is no such endpoint."""
    current = endpoint(connection, endpoint_id)
    if current is None:
        return None
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
    return endpoint(connection, endpoint_id)


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
