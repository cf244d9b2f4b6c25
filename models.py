from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    any_,
    bindparam,
    event,
    make_url,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryableAttribute, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import InternalTraversal

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware on every engine
    (SQLite keeps no zone, so its values come back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value  # type: ignore[no-any-return]
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


class Contact(Base):
    """One row per request that brought new information (docs/api.md:
    "Identify's rules")."""

    __tablename__ = "contact"
    # AUTOINCREMENT on SQLite: a deleted row's id (detach, erase) is never
    # given to a new contact (migration 0005).
    __table_args__ = (
        CheckConstraint(
            "link_precedence IN ('primary', 'secondary')", name="link_precedence"
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    phone_number: Mapped[str | None] = mapped_column(String(16), index=True)
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    linked_id: Mapped[int | None] = mapped_column(ForeignKey("contact.id"), index=True)
    link_precedence: Mapped[str] = mapped_column(String(9))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


MERGED_WITH = {
    column: f"type = 'customer.merged' AND {column} IS NOT NULL"
    for column in ("email", "phone_number")
}


class Event(Base):
    """One change to the contact table, with the values that caused it: the
    ledger (docs/api.md: "The ledger"). Ids grow in commit order (ledger.py)."""

    __tablename__ = "event"
    # AUTOINCREMENT on SQLite: an id is never given out twice, even if the
    # newest event were ever deleted, so a reader's cursor stays valid. The
    # merge events' values have indexes of their own: the partners of a value
    # (MAX_PARTNERS_PER_VALUE) are read from them on every write, and a value
    # refused many times must not make that read longer. Each holds only its
    # column's non-null values, so that a read by email can use the email's
    # index only (migration 0008).
    __table_args__ = (
        *(
            Index(
                f"ix_event_merged_{column}",
                column,
                sqlite_where=text(MERGED_WITH[column]),
                postgresql_where=text(MERGED_WITH[column]),
            )
            for column in ("email", "phone_number")
        ),
        # `types=` on the feed, and the webhook worker's reads (migration 0009):
        # id first, so that no read by type alone can take it. Led by the type,
        # PostgreSQL read an email's merge partners through it (every merge
        # event) when its statistics predated the merges.
        Index("ix_event_id_type", "id", "type"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    request_id: Mapped[str | None] = mapped_column(String(128))
    customer_id: Mapped[int] = mapped_column(index=True)
    contact_ids: Mapped[list[int]] = mapped_column(JSON)
    absorbed_customer_id: Mapped[int | None]
    previous_customer_id: Mapped[int | None]
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    phone_number: Mapped[str | None] = mapped_column(String(16), index=True)
    # Why: the guard's verdict on a refused link, or the reason support gave
    # for a detach or an erasure (a ticket reference; may hold personal data).
    reason: Mapped[str | None] = mapped_column(String(200))
    # The limit a refused link reached: MAX_VALUES_PER_CUSTOMER or
    # MAX_PARTNERS_PER_VALUE.
    limit_name: Mapped[str | None] = mapped_column(String(32))


class BlockedValue(Base):
    """An email or a phone number the shop never wants matched or stored."""

    __tablename__ = "blocked_value"
    # AUTOINCREMENT on SQLite: a deleted value's id is never given to a new
    # one, so a repeated DELETE cannot remove it (migration 0006).
    __table_args__ = (
        CheckConstraint("(email IS NULL) <> (phone_number IS NULL)", name="one_value"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254), unique=True)
    phone_number: Mapped[str | None] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SuppressedValue(Base):
    """An erased person's email or phone, kept only as a keyed hash
    (guard.Guard.digest) so that it is never matched or stored again."""

    __tablename__ = "suppressed_value"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ErasureKeyCheck(Base):
    """A keyed hash of a fixed text made with the ERASURE_KEY that suppressed
    values are hashed with (never the key): one row, stored with the first
    suppressed value, so that the service can tell a missing or another key
    from the right one at start and in /health (guard.erasure_key_problem)."""

    __tablename__ = "erasure_key_check"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LegacyLink(Base):
    """A link from before the ledger that no shared value explained when the
    ledger was created (migration 0004): the only evidence that the contact
    belongs with that primary, so a detach never undoes it."""

    __tablename__ = "legacy_link"

    contact_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int]


class WebhookEndpoint(Base):
    """A URL that a shop registered to receive the ledger's events
    (webhooks.py). Its signing secrets are stored encrypted (docs/api.md:
    "Following changes: webhooks")."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    # The event types it receives; null for every type.
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(400))
    # The secret a rotation replaced, signing beside the new one until
    # previous_secret_until.
    previous_secret: Mapped[str | None] = mapped_column(String(400))
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The id of the last event handed over to its deliveries (delivery.py).
    handed_over: Mapped[int] = mapped_column(Integer)
    # No attempt before this time: the receiver's Retry-After.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """An event still to deliver to an endpoint: a row exists from its
    hand-over until a receiver took it or the retries gave up."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "endpoint_id", "next_attempt_at"),
    )

    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[int] = mapped_column(
        Integer, primary_key=True, autoincrement=False
    )
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One attempt to deliver an event to an endpoint, as
    GET /webhooks/{id}/deliveries lists it; never a payload."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (
        Index("ix_webhook_attempt_endpoint_id", "endpoint_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoint.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    # delivered, failed, gave_up (the last retry failed) or gone (410).
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebhookOutcome(Base):
    """How many delivery attempts ended in each outcome, ever: counted in the
    transaction that records them, for /metrics (the worker is another
    process)."""

    __tablename__ = "webhook_outcome"

    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class ImportedFile(Base):
    """How far the import of one file got: its lines, sorted as they are
    applied, up to `applied` are committed (importing.py). Written in each
    batch's transaction, so a run that stops leaves whole batches, and the
    next run of the same file (same SHA-256) starts after them."""

    __tablename__ = "imported_file"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    lines: Mapped[int]
    applied: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# A service transaction runs for milliseconds, and is idle only while its
# worker prepares the next statement: this long idle means the worker froze.
# Below locks.BUSY_TIMEOUT, so the writers it held up are served, not 503'd.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0


def engine_options(url: str, *, pool_size: int) -> dict[str, Any]:
    """Engine settings for the database at `url`.

    Connections run in autocommit mode, as on SQLite (prepare_engine): a read
    is one statement and needs no transaction, so a lookup is one round trip;
    code that writes sends its own BEGIN (locks.py, migrations/env.py).
    `pool_size` connections stay open: at least one per thread of a
    gunicorn worker (settings.database_pool_size), so no request waits for
    one or opens a PostgreSQL session of its own. As many more may open for
    code that holds several at once (the CLI, tests); each is closed when
    given back. They are not pinged before use, which would cost a round
    trip per request: writes.retrying() replaces one the server closed.

    The server ends a transaction left idle for IDLE_IN_TRANSACTION_TIMEOUT
    seconds (a worker frozen or killed mid-request), so its locks go with
    it. JIT compilation is off. The settings are added to any `options` the
    URL already has."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        idle = round(IDLE_IN_TRANSACTION_TIMEOUT * 1000)
        options = [str(parsed.query.get("options", ""))]
        options.append(f"-c idle_in_transaction_session_timeout={idle}")
        # The history's per-event checks (reads.py) are estimated at 100
        # contact ids an event, so a large customer's plan passes
        # jit_above_cost; compiling it took 1 s for a 20 ms query. Nothing the
        # service runs is long enough for JIT to pay.
        options.append("-c jit=off")
        return {
            "connect_args": {"options": " ".join(filter(None, options))},
            "isolation_level": "AUTOCOMMIT",
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "pool_recycle": 1800,
        }
    return {}


def prepare_engine(engine: Engine, *, synchronous: str) -> None:
    """SQLite settings for every new connection: WAL (readers never block the
    writer), `synchronous` (FULL: a commit is on disk before it is
    acknowledged; see settings.py), foreign keys, zeroed free space, fewer
    checkpoints, no busy timeout (locks.py waits for the write lock
    itself), and autocommit: Python's sqlite3 module would otherwise begin
    a transaction before the first write on its own, after the reads that
    decided it."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def configure_connection(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in (
            "journal_mode = WAL",
            f"synchronous = {synchronous}",
            "busy_timeout = 0",
            "foreign_keys = ON",
            # Zero what a delete frees, whatever the build's default (SQLite's
            # own is off, some systems' on): a detached value or a deleted
            # blocked value then leaves no copy in the space it freed. Copies
            # that page splits left behind go only with VACUUM (purge.py).
            "secure_delete = ON",
            # Copy the WAL back every 16 MiB instead of 4: a checkpoint costs
            # two fsyncs whatever its size, paid by the request that set it off.
            "wal_autocheckpoint = 4000",
        ):
            dbapi_connection.execute(f"PRAGMA {pragma}")


class OneOf(ColumnElement[bool]):
    """`column` equals one of the values of the list bound as `name`. On
    PostgreSQL the list is one array parameter (`= ANY`); elsewhere it is
    expanded into IN (...), a parameter per value. Expanded, a thousand ids
    cost SQLAlchemy and the server about 8 ms per statement."""

    inherit_cache = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: QueryableAttribute[Any], name: str) -> None:
        self.column = column.expression
        self.name = name


@compiles(OneOf)
def _expanded(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    values: BindParameter[Any] = bindparam(element.name, expanding=True)
    return compiler.process(element.column.in_(values), **kw)


@compiles(OneOf, "postgresql")
def _array(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    values: BindParameter[Any] = bindparam(
        element.name, type_=ARRAY(element.column.type)
    )
    return compiler.process(element.column == any_(values), **kw)
