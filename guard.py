"""Protection against over-merging: the values never matched or stored, and
the limits a customer and a value may reach (docs/api.md: "Protection against
over-merging"). screen() is the screening rule, pure: which values a request
keeps, given which of them the database holds as blocked or suppressed
(reads.screen reads that). The limits themselves are applied by
reconcile.decide()."""

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Insert, delete, exists, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

import locks
import settings
from models import BlockedValue, ErasureKeyCheck, SuppressedValue
from reconcile import EMAIL, PHONE_NUMBER, Ignored, Limits

PLACEHOLDER_LOCAL_PARTS = frozenset(
    {
        "test",
        "null",
        "none",
        "noemail",
        "no-email",
        "na",
        "n.a",
        "unknown",
        "noreply",
        "no-reply",
        "donotreply",
        "asdf",
        "abc",
        "xxx",
    }
)
_REPEATED_DIGIT = re.compile(r"(\d)\1{5,}")
_RUN_LENGTH = 8


@dataclass(frozen=True)
class BuiltinRule:
    id: str
    field: str
    description: str


BUILTIN_RULES = (
    BuiltinRule(
        "builtin:repeated-digit",
        PHONE_NUMBER,
        "phone numbers whose digits are one digit repeated, six or more times,"
        " also after a + and a country code of 1 to 3 digits",
    ),
    BuiltinRule(
        "builtin:digit-run",
        PHONE_NUMBER,
        "phone numbers whose digits are an ascending or descending run of eight"
        " or more, 0 following 9 and 9 following 0 (12345678, 1234567890,"
        " 9876543210), also after a + and a country code of 1 to 3 digits",
    ),
    BuiltinRule(
        "builtin:placeholder-email",
        EMAIL,
        "emails whose local part is one of "
        + ", ".join(sorted(PLACEHOLDER_LOCAL_PARTS)),
    ),
)


def builtin_rule(field: str, value: str) -> BuiltinRule | None:
    """The built-in rule that blocks this normalised value, if any."""
    if field == EMAIL:
        local_part = value.rpartition("@")[0]
        return BUILTIN_RULES[2] if local_part in PLACEHOLDER_LOCAL_PARTS else None
    digits = value.removeprefix("+")
    # After a leading +, the number may start with a country code of 1 to 3
    # digits: +1 000 000 0000 is a placeholder too.
    national = [digits[length:] for length in (1, 2, 3)] if value[0] == "+" else []
    for number in (digits, *national):
        if _REPEATED_DIGIT.fullmatch(number):
            return BUILTIN_RULES[0]
        if len(number) >= _RUN_LENGTH and _is_run(number):
            return BUILTIN_RULES[1]
    return None


# Every ascending run of up to 21 digits, 0 following 9, is a part of this
# text, and every descending one of its reverse: a lookup per number where
# the digits' steps cost 8 µs (an import checks every line's phone).
_ASCENDING = "0123456789" * 3
_DESCENDING = _ASCENDING[::-1]


def _is_run(digits: str) -> bool:
    return digits in _ASCENDING or digits in _DESCENDING


@dataclass(frozen=True)
class Screening:
    """A request's values once screened: those kept (None when dropped or not
    sent), and those dropped, with why."""

    email: str | None
    phone_number: str | None
    ignored: tuple[Ignored, ...]

    @property
    def usable(self) -> bool:
        return self.email is not None or self.phone_number is not None


def screen(
    email: str | None,
    phone_number: str | None,
    *,
    builtin: bool,
    flagged: Mapping[str, str],
) -> Screening:
    """The screening rule, pure: drop the values the built-in rules block
    (with `builtin`), then those the database flags (`flagged`: EMAIL or
    PHONE_NUMBER to "blocked", one of the shop's blocked values, or
    "suppressed", an erased person's). `ignored` lists the built-in rules'
    drops first, then the flags', the email before the phone in each."""
    ignored: list[Ignored] = []
    kept = {EMAIL: email, PHONE_NUMBER: phone_number}
    for field, value in kept.items():
        if builtin and value is not None and builtin_rule(field, value):
            kept[field] = None
            ignored.append(Ignored(field, "blocked"))
    for field, value in kept.items():
        if value is not None and field in flagged:
            kept[field] = None
            ignored.append(Ignored(field, flagged[field]))
    return Screening(kept[EMAIL], kept[PHONE_NUMBER], tuple(ignored))


@dataclass(frozen=True)
class Guard:
    """The protection settings the service runs with."""

    builtin: bool
    limits: Limits | None
    # ERASURE_KEY: the secret of the hashes that suppressed values are kept
    # as; without it nothing can be suppressed, or found suppressed.
    erasure_key: bytes | None = None

    def digest(self, field: str, value: str | None) -> str | None:
        """The keyed hash a suppressed value is stored as; None without a
        value or a key."""
        if value is None or self.erasure_key is None:
            return None
        message = f"{field}:{value}".encode()
        return hmac.new(self.erasure_key, message, hashlib.sha256).hexdigest()

    def key_check(self) -> str | None:
        """A keyed hash of a fixed text: tells this key from another without
        storing it (ErasureKeyCheck). None without a key."""
        if self.erasure_key is None:
            return None
        return hmac.new(self.erasure_key, _KEY_CHECK_TEXT, hashlib.sha256).hexdigest()


_KEY_CHECK_TEXT = b"erasure key check"

# No protection at all: what the rules do when no guard is given.
NO_GUARD = Guard(builtin=False, limits=None)


def configured() -> Guard:
    """The Guard the settings ask for: BUILTIN_BLOCKLIST, MAX_VALUES_PER_CUSTOMER,
    MAX_PARTNERS_PER_VALUE, IDENTIFIER_PRIORITY and ERASURE_KEY, read by
    settings.py. Raises settings.ConfigurationError."""
    return Guard(
        builtin=settings.builtin_blocklist(),
        limits=Limits(
            max_values=settings.max_values_per_customer(),
            max_partners=settings.max_partners_per_value(),
            priority=settings.identifier_priority(),
        ),
        erasure_key=settings.erasure_key(),
    )


@dataclass(frozen=True)
class Blocked:
    """One of the shop's blocked values."""

    id: int
    field: str
    value: str
    created_at: datetime


_COLUMNS = {EMAIL: BlockedValue.email, PHONE_NUMBER: BlockedValue.phone_number}


def list_blocked(
    connection: Connection, *, after: int, limit: int
) -> tuple[list[Blocked], int | None]:
    """The shop's blocked values with an id above `after`, oldest first, at
    most `limit` of them, and the `after` of the next page (None when no
    more follow)."""
    rows = connection.execute(
        select(
            BlockedValue.id,
            BlockedValue.email,
            BlockedValue.phone_number,
            BlockedValue.created_at,
        )
        .where(BlockedValue.id > after)
        .order_by(BlockedValue.id)
        .limit(limit + 1)
    ).all()
    values = [
        Blocked(
            row.id,
            EMAIL if row.email else PHONE_NUMBER,
            row.email or row.phone_number,
            row.created_at,
        )
        for row in rows[:limit]
    ]
    return values, values[-1].id if len(rows) > limit else None


def add_blocked(
    connection: Connection, field: str, value: str, *, now: datetime
) -> Blocked | None:
    """Store a blocked value; None when it is one already."""
    _begin(connection)
    try:
        new_id = connection.execute(
            insert(BlockedValue)
            .values({_COLUMNS[field]: value, BlockedValue.created_at: now})
            .returning(BlockedValue.id)
        ).scalar_one()
        connection.commit()
    except IntegrityError:
        connection.rollback()
        return None
    return Blocked(new_id, field, value, now)


def delete_blocked(connection: Connection, value_id: int) -> bool:
    _begin(connection)
    deleted = connection.execute(
        delete(BlockedValue).where(BlockedValue.id == value_id)
    ).rowcount
    connection.commit()
    return bool(deleted)


def _begin(connection: Connection) -> None:
    """SQLite: wait for the write lock as every writer does; a write sent
    while another writer holds it fails at once (no busy timeout, locks.py)."""
    if connection.dialect.name == "sqlite":
        locks.begin_immediate(connection)


def _insert_new(connection: Connection, table: type) -> Insert:
    """INSERT that skips a row whose unique value is stored already."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def block_within(
    connection: Connection, field: str, value: str, *, now: datetime
) -> None:
    """Add a blocked value in the caller's transaction, unless it is one."""
    connection.execute(
        _insert_new(connection, BlockedValue),
        {_COLUMNS[field].key: value, "created_at": now},
    )


class WrongErasureKey(Exception):
    """ERASURE_KEY is missing, or is not the key that the suppressed values
    were made with: the message says which, and what to do."""


def suppress_within(
    connection: Connection, guard: Guard, digests: Iterable[str], *, now: datetime
) -> None:
    """Store suppressed values' digests in the caller's transaction, and the
    check value of the key they are made with if none is stored yet. Raises
    WrongErasureKey when another key's check value is stored."""
    rows = [{"digest": digest, "created_at": now} for digest in digests]
    if not rows:
        return
    check = guard.key_check()
    connection.execute(
        _insert_new(connection, ErasureKeyCheck),
        {"id": 1, "digest": check, "created_at": now},
    )
    if connection.execute(_STORED_CHECK).scalar() != check:
        raise WrongErasureKey(_ANOTHER_KEY)
    connection.execute(_insert_new(connection, SuppressedValue), rows)


_STORED_CHECK = select(ErasureKeyCheck.digest).where(ErasureKeyCheck.id == 1)
_ANY_SUPPRESSED = select(exists().select_from(SuppressedValue))
_ANOTHER_KEY = (
    "ERASURE_KEY is not the key that the suppressed values were made with: with"
    " it, an erased person would be stored again at their next order. Set it"
    " back to that key."
)


def erasure_key_problem(connection: Connection, guard: Guard) -> str | None:
    """Why the service must not run with `guard`'s ERASURE_KEY: values are
    suppressed and the key is missing, or is another than the one they were
    made with (its check value differs). None when it may. Values suppressed
    before check values were stored (migration 0007) cannot tell another
    key: the check is stored with the next suppressed value."""
    if not connection.execute(_ANY_SUPPRESSED).scalar():
        return None
    if guard.erasure_key is None:
        return (
            "values are suppressed (erased with suppress) but ERASURE_KEY is not"
            " set: without it, an erased person would be stored again at their"
            " next order. Set ERASURE_KEY to the key they were made with."
        )
    stored = connection.execute(_STORED_CHECK).scalar()
    if stored is not None and stored != guard.key_check():
        return _ANOTHER_KEY
    return None
