"""The webhook delivery worker, `flask --app app webhooks run` (docs/api.md:
"Following changes: webhooks"): a process of its own that hands the
ledger's new events over to each endpoint's deliveries and delivers them,
signed as Standard Webhooks says, at least once.

The ledger is the outbox. Each endpoint has a cursor, the id of the last
event handed over; the events after it are read through reads.feed, the
read that serves GET /events, so an event that shows up later always has a
greater id than the cursor. Handing over inserts a delivery row per event
the endpoint takes and moves the cursor, in one transaction. A delivery row
lives until the receiver answers 2xx or the retries give up; its result is
written after the HTTP exchange, so a worker killed in between delivers the
event again, with the same webhook-id. The body is built from the event row
just before each attempt: an erasure's nulls are what a later attempt sends.

One endpoint is served by one thread at a time: on PostgreSQL each turn
holds a session-level advisory lock on the endpoint, tried without waiting,
so several workers share the endpoints and never deliver to one endpoint at
the same time; no transaction stays open during an HTTP exchange. On SQLite
one worker runs per database file (a lock file beside it)."""

import fcntl
import http.client
import json
import logging
import random
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import click
from cryptography.fernet import InvalidToken
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    func,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from standardwebhooks import Webhook

import reads
import settings
import webhooks
from masking import json_formatter
from models import (
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookOutcome,
    engine_options,
    prepare_engine,
)

# The delays between attempts, as multiples of WEBHOOK_RETRY_BASE_SECONDS,
# each stretched by up to a quarter at random (jitter): with the default 10 s,
# 10 s, 30 s, 1 min, 5 min, 10 min, 30 min, 1 h, 2 h, then 4 h six times,
# 27.8 h from the first attempt to the last at least. An event is given up
# for an endpoint when its last attempt fails.
RETRY_STEPS = (1, 3, 6, 30, 60, 180, 360, 720, 1440, 1440, 1440, 1440, 1440, 1440)
ATTEMPTS = len(RETRY_STEPS) + 1
JITTER = 0.25
# Seconds an attempt may take, from connecting to the end of the answer.
TIMEOUT = 15.0
# The longest Retry-After honoured.
MAX_RETRY_AFTER = timedelta(hours=24)
# Events read from the ledger per hand-over, and due deliveries per read.
HAND_OVER_PAGE = 500
DUE_PAGE = 100
# Results are written every FLUSH_RESULTS attempts or FLUSH_SECONDS: a worker
# killed before that delivers those events again.
FLUSH_RESULTS = 50
FLUSH_SECONDS = 0.5
# An endpoint's turn ends after this, to let the others' turns begin.
TURN_SECONDS = 5.0
# Attempts older than this are deleted (prune_attempts), once an hour: at 500
# deliveries a second the table would otherwise grow by 43 million rows a day.
ATTEMPTS_KEPT = timedelta(days=30)
PRUNE_EVERY = 3600.0
PRUNE_BATCH = 10000
# Bytes of a receiver's answer read; it is not used.
ANSWER_BYTES = 64 * 1024
USER_AGENT = "identity-reconciliation-webhooks"

log = logging.getLogger("webhooks")

webhooks_cli = AppGroup("webhooks", help="Deliver the ledger's events to webhooks.")


def message_id(endpoint_id: int, event_id: int) -> str:
    """The webhook-id of an event's every attempt to one endpoint."""
    return f"msg_{endpoint_id}_{event_id}"


def retry_delay(attempt: int, base: float) -> timedelta:
    """The wait after failed attempt number `attempt` (1 for the first)."""
    step = RETRY_STEPS[attempt - 1] * base
    return timedelta(seconds=step * (1 + random.uniform(0, JITTER)))


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (seconds, or an HTTP date) as a wait from `now`,
    at most MAX_RETRY_AFTER; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        wait = timedelta(seconds=int(value[:9]))
    else:
        try:
            wait = parsedate_to_datetime(value) - now
        except (TypeError, ValueError):
            return None
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to one address vetted by webhooks.addresses, whatever DNS says by
    the time the connection opens; the Host header names the URL's host."""

    def __init__(self, host: str, port: int, address: str) -> None:
        super().__init__(host, port, timeout=TIMEOUT)
        self.address = address

    def connect(self) -> None:
        self.sock = _open_socket(self.address, self.port)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to one vetted address; the certificate is checked for the URL's
    host."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=TIMEOUT, context=self.tls)
        self.address = address

    def connect(self) -> None:
        raw = _open_socket(self.address, self.port)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _open_socket(address: str, port: int) -> socket.socket:
    connection = socket.create_connection((address, port), TIMEOUT)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


class TimedOut(OSError):
    """The attempt took longer than TIMEOUT."""


class Watchdog:
    """Ends the exchanges that outlive TIMEOUT: a thread that, a few times a
    second, shuts the socket of every connection watched for longer (its
    read or write then fails at once). One thread for the process: a timer
    thread per attempt cost a third of the worker's time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: dict[
            int, tuple[float, http.client.HTTPConnection, threading.Event]
        ] = {}
        self.thread: threading.Thread | None = None

    def watch(self, connection: http.client.HTTPConnection) -> threading.Event:
        """Watch `connection` from now; the event is set if it is ended."""
        expired = threading.Event()
        with self.lock:
            self.watched[id(connection)] = (
                time.monotonic() + TIMEOUT,
                connection,
                expired,
            )
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="webhooks-watchdog", daemon=True
                )
                self.thread.start()
        return expired

    def forget(self, connection: http.client.HTTPConnection) -> None:
        with self.lock:
            self.watched.pop(id(connection), None)

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self.lock:
                late = [
                    (connection, expired)
                    for deadline, connection, expired in self.watched.values()
                    if deadline < now and not expired.is_set()
                ]
            for connection, expired in late:
                expired.set()
                if connection.sock is not None:
                    try:
                        connection.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


WATCHDOG = Watchdog()


class Sender:
    """POSTs to one endpoint's URL over one kept-alive connection to an
    address vetted at its creation (webhooks.addresses: raises Unreachable)."""

    def __init__(self, url: str, *, allow_private: bool) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.address = webhooks.addresses(parts, allow_private=allow_private)[0]
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        """The answer's status and Retry-After. Raises OSError or
        http.client.HTTPException (TimedOut after TIMEOUT)."""
        reused = self.connection is not None
        try:
            return self._post(body, headers)
        except (ConnectionError, http.client.RemoteDisconnected):
            # A kept-alive connection the receiver closed while idle.
            self.close()
            if not reused:
                raise
            return self._post(body, headers)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        if self.connection is None:
            kind = _PinnedHTTPS if self.https else _PinnedHTTP
            self.connection = kind(self.host, self.port, self.address)
        connection = self.connection
        expired = WATCHDOG.watch(connection)
        try:
            connection.request("POST", self.path, body, headers)
            answer = connection.getresponse()
            answer.read(ANSWER_BYTES)
            if not answer.isclosed() or answer.will_close:
                self.close()
            return answer.status, answer.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as error:
            self.close()
            # The socket's own timeout (TIMEOUT per read) may fire first.
            if expired.is_set() or isinstance(error, TimeoutError):
                raise TimedOut(f"no answer within {TIMEOUT:g} s") from None
            raise
        finally:
            WATCHDOG.forget(connection)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass(frozen=True)
class Result:
    """One attempt's outcome, to be written: delivered, failed (retried at
    next_attempt_at), gave_up or gone (410; the endpoint is disabled)."""

    event_id: int
    attempt: int
    outcome: str
    at: datetime
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    retry_at: datetime | None = None


def describe(error: BaseException) -> str:
    """What went wrong with an exchange, for the attempts list and the log:
    the kind of error only, never a receiver's text."""
    if isinstance(error, TimedOut | webhooks.Unreachable):
        return str(error)[:200]
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or type(error).__name__}"[:200]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:200]
    return type(error).__name__


_EVENT = select(*Event.__table__.columns)
_ENDPOINT = select(*WebhookEndpoint.__table__.columns)


class Worker:
    """Serves every enabled endpoint, each on a thread of a bounded pool, one
    turn at a time (TURN_SECONDS at most), until stop() (SIGTERM).

    A turn reads the ledger once, and again only while it finds full pages
    (a backlog): on PostgreSQL each read takes the ledger lock exclusively
    for a moment, and read in a loop under load it held identify's writers
    up (124 of 300 requests/s served in the webhooks bench)."""

    def __init__(
        self,
        engine: Engine,
        box: webhooks.SecretBox,
        *,
        allow_private: bool,
        retry_base: float,
        poll: float,
        concurrency: int,
    ) -> None:
        self.engine = engine
        self.box = box
        self.allow_private = allow_private
        self.retry_base = retry_base
        self.poll = poll
        self.concurrency = concurrency
        self.stopping = threading.Event()
        self.serving: set[int] = set()
        self.serving_lock = threading.Lock()
        self.lock_base: int | None = None

    def run(self) -> None:
        """Serve until stop(); then let the turns in flight finish their
        current attempt and write their results."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                oid = connection.exec_driver_sql(
                    "SELECT 'webhook_endpoint'::regclass::oid::bigint"
                ).scalar_one()
            self.lock_base = (oid & 0x7FFFFFFF) << 32
        pruned = float("-inf")
        with ThreadPoolExecutor(self.concurrency, "webhooks") as pool:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() - pruned > PRUNE_EVERY:
                        self.prune_attempts(datetime.now(UTC) - ATTEMPTS_KEPT)
                        pruned = time.monotonic()
                    for endpoint_id in self.due_endpoints():
                        with self.serving_lock:
                            self.serving.add(endpoint_id)
                        pool.submit(self.turn, endpoint_id)
                except Exception:  # noqa: BLE001 - the database may be back soon
                    log.exception("could not read the endpoints")
                self.stopping.wait(self.poll)

    def stop(self) -> None:
        self.stopping.set()

    def prune_attempts(self, before: datetime) -> int:
        """Delete the attempts made before `before`, PRUNE_BATCH rows per
        transaction (a long one would hold SQLite's write lock); return how
        many."""
        oldest = (
            select(WebhookAttempt.id)
            .where(WebhookAttempt.at < before)
            .limit(PRUNE_BATCH)
            .scalar_subquery()
        )
        total = 0
        with self.engine.connect() as connection:
            while not self.stopping.is_set():
                webhooks.begin(connection)
                deleted = connection.execute(
                    delete(WebhookAttempt).where(WebhookAttempt.id.in_(oldest))
                ).rowcount
                connection.commit()
                total += deleted
                if deleted < PRUNE_BATCH:
                    break
        return total

    def due_endpoints(self) -> list[int]:
        """The enabled endpoints, not served now nor paused by a Retry-After,
        with events past their cursor or deliveries due."""
        now = datetime.now(UTC)
        with self.engine.connect() as connection:
            newest = connection.execute(select(func.max(Event.id))).scalar() or 0
            due = set(
                connection.execute(
                    select(WebhookDelivery.endpoint_id)
                    .where(WebhookDelivery.next_attempt_at <= now)
                    .distinct()
                ).scalars()
            )
            endpoints = connection.execute(
                select(
                    WebhookEndpoint.id,
                    WebhookEndpoint.handed_over,
                    WebhookEndpoint.retry_at,
                ).where(WebhookEndpoint.disabled_at.is_(None))
            ).all()
        with self.serving_lock:
            return [
                row.id
                for row in endpoints
                if row.id not in self.serving
                and (row.retry_at is None or row.retry_at <= now)
                and (row.handed_over < newest or row.id in due)
            ]

    def turn(self, endpoint_id: int) -> None:
        try:
            with (
                self.engine.connect() as connection,
                self._endpoint_lock(connection, endpoint_id) as held,
            ):
                if held:
                    self.serve(connection, endpoint_id)
        except Exception:  # noqa: BLE001 - the next turn tries again
            log.exception("an endpoint's turn failed", extra={"endpoint": endpoint_id})
        finally:
            with self.serving_lock:
                self.serving.discard(endpoint_id)

    @contextmanager
    def _endpoint_lock(
        self, connection: Connection, endpoint_id: int
    ) -> Iterator[bool]:
        """PostgreSQL: the endpoint's advisory lock, if no other worker holds
        it (yields False then). SQLite: one worker per file, always True."""
        if self.lock_base is None:
            yield True
            return
        key = self.lock_base | endpoint_id
        held = connection.exec_driver_sql(
            f"SELECT pg_try_advisory_lock({key})"
        ).scalar_one()
        try:
            yield bool(held)
        finally:
            if held and not connection.invalidated:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")

    def serve(self, connection: Connection, endpoint_id: int) -> None:
        """One turn: hand new events over and deliver what is due, until
        nothing is left, the turn's time is up, or the endpoint must wait."""
        endpoint = connection.execute(
            _ENDPOINT.where(WebhookEndpoint.id == endpoint_id)
        ).first()
        now = datetime.now(UTC)
        if (
            endpoint is None
            or endpoint.disabled_at is not None
            or (endpoint.retry_at is not None and endpoint.retry_at > now)
        ):
            return
        try:
            signing = [
                Webhook(s) for s in webhooks.open_secrets(self.box, endpoint, now)
            ]
        except InvalidToken:
            log.error(
                "an endpoint's secret does not open with WEBHOOK_SECRET_KEY",
                extra={"endpoint": endpoint_id},
            )
            return
        sender: Sender | None = None
        ends = time.monotonic() + TURN_SECONDS
        handed_over = endpoint.handed_over
        backlog = True
        try:
            while not self.stopping.is_set() and time.monotonic() < ends:
                read = 0
                if backlog:
                    handed_over, read = self.hand_over(
                        connection, endpoint, handed_over
                    )
                    backlog = read == HAND_OVER_PAGE
                due = connection.execute(
                    select(WebhookDelivery.event_id, WebhookDelivery.attempts)
                    .where(
                        WebhookDelivery.endpoint_id == endpoint_id,
                        WebhookDelivery.next_attempt_at <= datetime.now(UTC),
                    )
                    .order_by(WebhookDelivery.event_id)
                    .limit(DUE_PAGE)
                ).all()
                if not due and not read:
                    return
                if sender is None and due:
                    try:
                        sender = Sender(endpoint.url, allow_private=self.allow_private)
                    except webhooks.Unreachable as error:
                        self.write(
                            connection, endpoint_id, [self.failed(due[0], error)]
                        )
                        return
                if sender is not None and not self.deliver(
                    connection, endpoint_id, sender, signing, due
                ):
                    return
                if not backlog and len(due) < DUE_PAGE:
                    return
        finally:
            if sender is not None:
                sender.close()

    def hand_over(
        self, connection: Connection, endpoint: Any, handed_over: int
    ) -> tuple[int, int]:
        """Read the events after the endpoint's cursor (reads.feed), insert
        a delivery for each that it takes and move its cursor past them, in
        one transaction; (the new cursor, the events read). Nothing is done
        when the cursor moved meanwhile (a replay)."""
        page = reads.feed(connection, after=handed_over, limit=HAND_OVER_PAGE)
        if not page.events:
            return handed_over, 0
        last = page.events[-1]["id"]
        wanted = endpoint.event_types
        now = datetime.now(UTC)
        rows = [
            {
                "endpoint_id": endpoint.id,
                "event_id": event["id"],
                "attempts": 0,
                "next_attempt_at": now,
            }
            for event in page.events
            if wanted is None or event["type"] in wanted
        ]
        webhooks.begin(connection)
        moved = connection.execute(
            update(WebhookEndpoint)
            .where(
                WebhookEndpoint.id == endpoint.id,
                WebhookEndpoint.handed_over == handed_over,
            )
            .values(handed_over=last)
        ).rowcount
        if not moved:
            connection.rollback()
            current = connection.execute(
                select(WebhookEndpoint.handed_over).where(
                    WebhookEndpoint.id == endpoint.id
                )
            ).scalar()
            return (handed_over if current is None else current), 0
        if rows:
            connection.execute(_insert_new(connection), rows)
        connection.commit()
        return last, len(page.events)

    def deliver(
        self,
        connection: Connection,
        endpoint_id: int,
        sender: Sender,
        signing: Sequence[Webhook],
        due: Sequence[Any],
    ) -> bool:
        """Attempt `due` in order, writing results as they accumulate; False
        when the endpoint must wait (unreachable, 410, Retry-After) or the
        worker is stopping."""
        results: list[Result] = []
        written = time.monotonic()
        going_on = True
        for delivery in due:
            if self.stopping.is_set():
                going_on = False
                break
            result = self.attempt(connection, endpoint_id, sender, signing, delivery)
            results.append(result)
            if (
                result.outcome == "gone"
                or result.retry_at is not None
                or (result.outcome == "failed" and result.status_code is None)
            ):
                going_on = False
                break
            if (
                len(results) >= FLUSH_RESULTS
                or time.monotonic() - written > FLUSH_SECONDS
            ):
                self.write(connection, endpoint_id, results)
                results, written = [], time.monotonic()
        self.write(connection, endpoint_id, results)
        return going_on

    def attempt(
        self,
        connection: Connection,
        endpoint_id: int,
        sender: Sender,
        signing: Sequence[Webhook],
        delivery: Any,
    ) -> Result:
        """Send one event, its body built from its row as it is now."""
        row = connection.execute(_EVENT.where(Event.id == delivery.event_id)).first()
        now = datetime.now(UTC)
        number = delivery.attempts + 1
        if row is None:
            return Result(
                delivery.event_id, number, "gave_up", now, error="no such event"
            )
        event = reads.event_json(row)
        body = json.dumps(
            {"type": event["type"], "timestamp": event["at"], "data": event},
            separators=(",", ":"),
        ).encode()
        webhook_id = message_id(endpoint_id, delivery.event_id)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(
                secret.sign(webhook_id, now, body) for secret in signing
            ),
        }
        try:
            status, wait = sender.post(body, headers)
        except (OSError, http.client.HTTPException) as error:
            return self.failed(delivery, error)
        if 200 <= status < 300:
            return Result(delivery.event_id, number, "delivered", now, status)
        if status == 410:
            return Result(
                delivery.event_id, number, "gone", now, status, "410 Gone", now
            )
        return self.failed(delivery, None, status, retry_after(wait, now))

    def failed(
        self,
        delivery: Any,
        error: BaseException | None,
        status: int | None = None,
        wait: timedelta | None = None,
    ) -> Result:
        now = datetime.now(UTC)
        number = delivery.attempts + 1
        reason = describe(error) if error is not None else f"HTTP {status}"
        if number >= ATTEMPTS:
            return Result(delivery.event_id, number, "gave_up", now, status, reason)
        later = now + (
            wait if wait is not None else retry_delay(number, self.retry_base)
        )
        return Result(
            delivery.event_id,
            number,
            "failed",
            now,
            status,
            reason,
            later,
            later if wait is not None else None,
        )

    def write(
        self, connection: Connection, endpoint_id: int, results: Sequence[Result]
    ) -> None:
        """Write attempts' results in one transaction: the delivery rows
        (gone once delivered or given up), the attempts, the counts by
        outcome, and what the endpoint must do (disabled by a 410, paused by
        a Retry-After)."""
        if not results:
            return
        webhooks.begin(connection)
        finished = [
            r.event_id for r in results if r.outcome in ("delivered", "gave_up")
        ]
        if finished:
            connection.execute(
                delete(WebhookDelivery).where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.event_id.in_(finished),
                )
            )
        waiting = [r for r in results if r.outcome in ("failed", "gone")]
        if waiting:
            connection.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.event_id == bindparam("event"),
                )
                .values(
                    attempts=bindparam("attempts"), next_attempt_at=bindparam("next")
                ),
                [
                    {
                        "event": r.event_id,
                        "attempts": r.attempt,
                        "next": r.next_attempt_at or r.at,
                    }
                    for r in waiting
                ],
            )
        connection.execute(
            insert(WebhookAttempt),
            [
                {
                    "endpoint_id": endpoint_id,
                    "event_id": r.event_id,
                    "attempt": r.attempt,
                    "outcome": r.outcome,
                    "status_code": r.status_code,
                    "error": r.error,
                    "at": r.at,
                }
                for r in results
            ],
        )
        counts: dict[str, int] = {}
        for r in results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        connection.execute(
            _count(connection),
            [{"outcome": outcome, "count": n} for outcome, n in sorted(counts.items())],
        )
        last = results[-1]
        if last.outcome == "gone":
            connection.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(
                    disabled_at=last.at,
                    disabled_reason="The receiver answered 410 Gone.",
                )
            )
            log.warning("endpoint disabled: 410 Gone", extra={"endpoint": endpoint_id})
        if last.retry_at is not None:
            connection.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(retry_at=last.retry_at)
            )
        connection.commit()
        for r in results:
            if r.outcome != "delivered":
                log.info(
                    "delivery %s",
                    r.outcome,
                    extra={
                        "endpoint": endpoint_id,
                        "event": r.event_id,
                        "attempt": r.attempt,
                        "status_code": r.status_code,
                        "error": r.error,
                    },
                )


def _insert_new(connection: Connection) -> Any:
    """INSERT of delivery rows that skips one that exists already."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(WebhookDelivery).on_conflict_do_nothing()


def _count(connection: Connection) -> Any:
    """Add :count to the outcome's count, its row made at the first."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(WebhookOutcome)
    return statement.on_conflict_do_update(
        index_elements=[WebhookOutcome.outcome],
        set_={"count": WebhookOutcome.count + statement.excluded.count},
    )


@contextmanager
def only_worker(url: str) -> Iterator[None]:
    """SQLite: hold the lock file beside the database for as long as the
    worker runs; a second worker on the same file stops with a message."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        yield
        return
    path = Path(f"{parsed.database}.webhooks-lock")
    handle: IO[str] = path.open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(
                "Another webhook worker serves this SQLite database: on SQLite one"
                " runs at a time. Stop it first, or use PostgreSQL to run several."
            ) from None
        yield
    finally:
        handle.close()


@webhooks_cli.command("run")
def run() -> None:
    """Deliver events to the webhook endpoints until SIGTERM or Ctrl-C."""
    key = current_app.config.get("WEBHOOK_SECRET_KEY")
    if key is None:
        raise click.ClickException(
            "WEBHOOK_SECRET_KEY is not set: it is the key the endpoints' signing"
            " secrets are encrypted with, and the worker cannot sign without it."
        )
    try:
        retry_base = settings.webhook_retry_base()
        poll = settings.webhook_poll_seconds()
        concurrency = settings.webhook_concurrency()
    except settings.ConfigurationError as error:
        raise click.ClickException(str(error)) from None
    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    with only_worker(url):
        engine = create_engine(url, **engine_options(url, pool_size=concurrency + 1))
        prepare_engine(engine, synchronous=current_app.config["SQLITE_SYNCHRONOUS"])
        worker = Worker(
            engine,
            webhooks.SecretBox(key),
            allow_private=current_app.config["WEBHOOK_ALLOW_PRIVATE"],
            retry_base=retry_base,
            poll=poll,
            concurrency=concurrency,
        )
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: worker.stop())
        log.info(
            "webhook worker started",
            extra={"database": settings.describe_database(url), "threads": concurrency},
        )
        worker.run()
        engine.dispose()
        log.info("webhook worker stopped")
