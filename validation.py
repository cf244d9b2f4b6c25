"""Parsing and normalising what clients send: the identify body (README: "The
contract", normalisation) and the paging parameters of the lists."""

import re
from collections.abc import Mapping
from typing import Any

from email_validator import EmailNotValidError, validate_email

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
    checked by check_email() (store.py does it unless the database holds the
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


def check_email(email: str) -> str:
    """The normalised form of a trimmed, lower-cased email whose syntax a
    validation library accepts (no DNS look-up). Raises InvalidInput."""
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
    """Return (after, limit) of a list's query string: `after` an event id,
    0 to MAX_ID (default 0, the start); `limit` 1 to MAX_PAGE (default
    DEFAULT_PAGE). Raises InvalidInput for anything else."""
    after = _whole_number(args, "after", 0)
    if after > MAX_ID:
        raise InvalidInput(f"after must be from 0 to {MAX_ID}.")
    limit = _whole_number(args, "limit", DEFAULT_PAGE)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}.")
    return after, limit


def _whole_number(args: Mapping[str, str], name: str, default: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{name} must be a whole number, 0 or more.")
    return int(value)


def parse_blocked_value(body: Any) -> tuple[str, str]:
    """The field ("email" or "phoneNumber") and normalised value of a body
    that holds exactly one of them. Raises InvalidInput."""
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    email = normalise_email(body.get("email"))
    phone_number = normalise_phone_number(body.get("phoneNumber"))
    if (email is None) == (phone_number is None):
        raise InvalidInput("Send exactly one of email and phoneNumber.")
    if email is not None:
        return "email", email
    assert phone_number is not None
    return "phoneNumber", phone_number


def parse_detach(body: Any) -> tuple[str, str, bool, bool]:
    """The field, normalised value, `block` and `dryRun` of a detach body.
    Raises InvalidInput."""
    field, value = parse_blocked_value(body)
    return field, value, _flag(body, "block"), _flag(body, "dryRun")


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false.")
    return value


def parse_flags(args: Mapping[str, str], *names: str) -> dict[str, bool]:
    """Query-string switches: each absent, `true` or `false`. Raises
    InvalidInput."""
    flags = {}
    for name in names:
        value = args.get(name, "false")
        if value not in {"true", "false"}:
            raise InvalidInput(f"{name} must be true or false.")
        flags[name] = value == "true"
    return flags


def parse_holders(body: Any) -> tuple[str, str]:
    """The field and normalised value of a body that holds exactly one of
    email and phoneNumber and nothing else (the value is looked up, not
    stored, so a member the service does not know is a mistake to report,
    not to ignore). Raises InvalidInput."""
    if isinstance(body, dict) and body.keys() - {"email", "phoneNumber"}:
        raise InvalidInput(
            "Send exactly one of email and phoneNumber, and nothing else."
        )
    return parse_blocked_value(body)
