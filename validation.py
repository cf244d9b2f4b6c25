"""Parsing and normalising what clients send: the identify body (docs/api.md:
"Input and normalisation"), the paging parameters of the lists, and the
requests that correct customers and blocked values, which refuse any query
parameter or body member they do not know (docs/api.md: "Correcting a
customer")."""

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT
from werkzeug.datastructures import MultiDict

from reconcile import EventType

MAX_EMAIL_LENGTH = 254
# The largest request body the service reads, declared or sent chunked.
MAX_BODY_BYTES = 64 * 1024
_PHONE_FORMATTING = re.compile(r"[ \-.()]")
_PHONE = re.compile(r"\+?[0-9]{4,15}")


class InvalidInput(ValueError):
    """The request cannot be served as sent; the message says why, for a person."""


def parse_identify(body: Any) -> tuple[str | None, str | None]:
    """Return the (email, phone_number) of an identify request body: the phone
    normalised; the email trimmed and lower-cased, with its syntax still to be
    checked by check_email() (reads.screen does it unless the database holds the
    email already: every stored email was checked when it was stored).

    Missing, null, empty and whitespace-only values come back as None. Raises
    InvalidInput when the body is not an object, a value is of the wrong type
    or malformed, or neither value is given.
    """
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    email = trim_email(body.get("email"))
    phone_number = normalise_phone_number(body.get("phoneNumber"))
    if email is None and phone_number is None:
        raise InvalidInput("Send an email, a phoneNumber, or both.")
    return email, phone_number


def normalise_email(value: Any) -> str | None:
    """The email as stored: trimmed, lower-cased and checked; None when absent."""
    email = trim_email(value)
    return None if email is None else check_email(email)


def trim_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("email must be a string or null.")
    email = value.strip().lower()
    if not email:
        return None
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidInput(f"email must be at most {MAX_EMAIL_LENGTH} characters.")
    return email


# An address the library accepts as it is: a dot-atom of at most 64 ASCII
# characters, an @, a domain of ASCII letters, digits, dots and hyphens it
# accepts unchanged, 254 characters in all.
_PLAIN_DOMAIN = re.compile(r"[a-z0-9.-]+")
_MAX_LOCAL_PART = 64


@lru_cache(maxsize=1 << 12)
def _plain_domain(domain: str) -> bool:
    """Whether the library accepts `domain` after an @ and leaves it as it is:
    its check of a domain (IDNA) costs five times its check of the rest."""
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return False
    return checked.domain == domain and checked.ascii_domain == domain


def check_email(email: str) -> str:
    """The normalised form of a trimmed, lower-cased email whose syntax a
    validation library accepts (no DNS look-up). Raises InvalidInput."""
    local, at, domain = email.rpartition("@")
    if (
        at
        and len(email) <= MAX_EMAIL_LENGTH
        and len(local) <= _MAX_LOCAL_PART
        and DOT_ATOM_TEXT.match(local)
        and _PLAIN_DOMAIN.fullmatch(domain)
        and _plain_domain(domain)
    ):
        return email.lower()
    try:
        checked = validate_email(email, check_deliverability=False)
    except EmailNotValidError as error:
        raise InvalidInput(f"email is not a valid address: {error}") from None
    return checked.normalized.lower()


def normalise_phone_number(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(
            "phoneNumber must be a string, a non-negative integer, or null."
        )
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput("phoneNumber must not be negative.")
        value = str(value)
    phone_number = _PHONE_FORMATTING.sub("", value.strip())
    if not phone_number:
        return None
    if not _PHONE.fullmatch(phone_number):
        raise InvalidInput(
            "phoneNumber must hold 4 to 15 digits, optionally after one leading '+';"
            " spaces, hyphens, dots and parentheses are ignored."
        )
    return phone_number


MAX_PAGE = 100
DEFAULT_PAGE = 50
# The largest id a contact or an event can have: their id columns are
# INTEGER, 32 bits on PostgreSQL, which refuses a larger parameter.
MAX_ID = 2**31 - 1


def parse_page(args: Mapping[str, str]) -> tuple[int, int]:
    """Return (after, limit) of a list's query string: `after` an id (of an
    event, of a blocked value), 0 to MAX_ID (default 0, the start); `limit`
    1 to MAX_PAGE (default DEFAULT_PAGE). Raises InvalidInput for anything
    else."""
    after = _whole_number(args, "after", 0)
    if after > MAX_ID:
        raise InvalidInput(f"after must be from 0 to {MAX_ID}.")
    limit = _whole_number(args, "limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}.")
    return after, limit


EVENT_TYPES = tuple(kind.value for kind in EventType)


def parse_types(args: Mapping[str, str]) -> list[str] | None:
    """The event types of a list's `types` (comma-separated), or None when it
    is absent: every type. Raises InvalidInput naming each unknown type (an
    empty one too)."""
    value = args.get("types")
    if value is None:
        return None
    return event_types(value.split(","), "types")


def event_types(names: Sequence[Any], where: str) -> list[str]:
    """`names` as event types, each once, in the order given. Raises
    InvalidInput naming those that are not event types (`where` names the
    parameter or member)."""
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown:
        listed = ", ".join(
            _quoted(name) if isinstance(name, str) else json.dumps(name)[:40]
            for name in unknown
        )
        raise InvalidInput(
            f"Unknown event type{'s' if len(unknown) > 1 else ''} in {where}:"
            f" {listed}. The types are {_listed(EVENT_TYPES)}."
        )
    return list(dict.fromkeys(names))


def _whole_number(args: Mapping[str, str], name: str, default: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{name} must be a whole number, 0 or more.")
    return int(value)


BLOCKED_VALUE_MEMBERS = ("email", "phoneNumber")
PAGE_PARAMETERS = ("after", "limit")
DETACH_MEMBERS = ("email", "phoneNumber", "block", "dryRun", "reason")
ERASE_PARAMETERS = ("suppress", "dryRun", "reason")
NOTHING_CHANGED = "Nothing was changed."
MAX_REASON_LENGTH = 200
# Unknown names are quoted back, cut to this length.
_QUOTED_NAME_LENGTH = 40


def parse_blocked_value(args: MultiDict[str, str], body: Any) -> tuple[str, str]:
    """The field ("email" or "phoneNumber") and normalised value of a
    POST /blocked-values: no query parameter, a body with exactly one of the
    two and no other member. Raises InvalidInput."""
    _refuse_unknown(args, (), "POST /blocked-values", "query parameter")
    body = _object(body)
    _refuse_unknown(body, BLOCKED_VALUE_MEMBERS, "POST /blocked-values", "body member")
    return _one_value(body)


def parse_blocked_page(args: MultiDict[str, str]) -> tuple[int, int]:
    """(after, limit) of GET /blocked-values, as parse_page reads them; any
    other query parameter, or one given twice, raises InvalidInput."""
    _refuse_unknown(args, PAGE_PARAMETERS, "GET /blocked-values", "query parameter")
    return parse_page(args)


def parse_no_input(args: MultiDict[str, str], body: bytes, route: str) -> None:
    """Refuse any query parameter and any body: `route` takes neither. Raises
    InvalidInput."""
    _refuse_unknown(args, (), route, "query parameter")
    if body:
        raise InvalidInput(f"{route} takes no body. {NOTHING_CHANGED}")


@dataclass(frozen=True)
class Detach:
    """What POST /customers/{id}/detach asks for."""

    field: str
    value: str
    block: bool
    dry_run: bool
    reason: str | None


@dataclass(frozen=True)
class Erase:
    """What DELETE /customers/{id} asks for."""

    suppress: bool
    dry_run: bool
    reason: str | None


def parse_detach(args: MultiDict[str, str], body: Any) -> Detach:
    """A detach: no query parameter; a body with exactly one of email and
    phoneNumber, and optionally the booleans `block` and `dryRun` and a
    `reason` (parse_reason), and no other member. Raises InvalidInput."""
    route = "POST /customers/{id}/detach"
    _refuse_unknown(args, (), route, "query parameter", "its options go in the body")
    body = _object(body)
    _refuse_unknown(body, DETACH_MEMBERS, route, "body member")
    field, value = _one_value(body)
    return Detach(
        field,
        value,
        block=_flag(body, "block"),
        dry_run=_flag(body, "dryRun"),
        reason=parse_reason(body["reason"]) if "reason" in body else None,
    )


def parse_erase(args: MultiDict[str, str], body: bytes) -> Erase:
    """An erase: the query parameters `suppress` and `dryRun` (each `true` or
    `false`) and `reason` (parse_reason), each at most once, no other, and no
    body. Raises InvalidInput."""
    route = "DELETE /customers/{id}"
    if body:
        raise InvalidInput(
            f"{route} takes no body: send suppress, dryRun and reason in the query"
            f" string. {NOTHING_CHANGED}"
        )
    _refuse_unknown(args, ERASE_PARAMETERS, route, "query parameter")
    reason = args.get("reason")
    return Erase(
        suppress=_switch(args, "suppress"),
        dry_run=_switch(args, "dryRun"),
        reason=None if reason is None else parse_reason(reason),
    )


def parse_reason(value: Any) -> str:
    """The reason support gives for a detach or an erasure (a ticket
    reference), trimmed: a string of 1 to MAX_REASON_LENGTH characters once
    trimmed, without control characters. It may hold personal data: it is
    stored on the correction's events, never logged, and never quoted back.
    Raises InvalidInput."""
    if not isinstance(value, str):
        raise InvalidInput("reason must be a string.")
    reason = value.strip()
    if not 1 <= len(reason) <= MAX_REASON_LENGTH:
        raise InvalidInput(
            f"reason must be 1 to {MAX_REASON_LENGTH} characters once trimmed."
        )
    # Cs: an unpaired surrogate, which JSON can carry, cannot be stored.
    if any(unicodedata.category(c) in {"Cc", "Cs"} for c in reason):
        raise InvalidInput(
            "reason must not hold control characters (line breaks, tabs, ...)."
        )
    return reason


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    return body


def _one_value(body: dict[str, Any]) -> tuple[str, str]:
    email = normalise_email(body.get("email"))
    phone_number = normalise_phone_number(body.get("phoneNumber"))
    if (email is None) == (phone_number is None):
        raise InvalidInput("Send exactly one of email and phoneNumber.")
    if email is not None:
        return "email", email
    assert phone_number is not None
    return "phoneNumber", phone_number


def _refuse_unknown(
    given: Mapping[str, Any],
    accepted: Sequence[str],
    route: str,
    kind: str,
    hint: str = "",
) -> None:
    """Raise InvalidInput naming the names of `given` that are not `accepted`
    and the accepted ones (and `hint`, when `route` accepts none); or, for a
    query string, a name given twice: a request that changes data is never
    served on a guess."""
    unknown = [name for name in given if name not in accepted]
    if unknown:
        names = ", ".join(_quoted(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        takes = f"accepts {_listed(accepted)}" if accepted else f"takes no {kind}s"
        if hint and not accepted:
            takes += f" ({hint})"
        raise InvalidInput(
            f"Unknown {kind}{plural} {names}: {route} {takes}. {NOTHING_CHANGED}"
        )
    if isinstance(given, MultiDict):
        for name in accepted:
            if len(given.getlist(name)) > 1:
                raise InvalidInput(
                    f"The {kind} {name} is given more than once; give it once."
                    f" {NOTHING_CHANGED}"
                )


def _quoted(name: str) -> str:
    if len(name) > _QUOTED_NAME_LENGTH:
        name = name[:_QUOTED_NAME_LENGTH] + "..."
    return json.dumps(name)


def _listed(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false.")
    return value


def parse_holders(body: Any) -> tuple[str, str]:
    """The field and normalised value of a POST /customers/holders body: one
    of email and phoneNumber and nothing else (the value is looked up, not
    stored, so a member the service does not know is a mistake to report,
    not to ignore). Raises InvalidInput."""
    body = _object(body)
    _refuse_unknown(
        body, BLOCKED_VALUE_MEMBERS, "POST /customers/holders", "body member"
    )
    return _one_value(body)


def _switch(args: Mapping[str, str], name: str) -> bool:
    """A query-string switch: absent, `true` or `false`."""
    value = args.get(name, "false")
    if value not in {"true", "false"}:
        raise InvalidInput(f"{name} must be true or false.")
    return value == "true"
