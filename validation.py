"""Parsing and normalising the body of POST /identify (README: "The contract")."""

import re
from typing import Any

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254
_PHONE_FORMATTING = re.compile(r"[ \-.()]")
_PHONE = re.compile(r"\+?[0-9]{4,15}")


class InvalidInput(ValueError):
    """The request cannot be served as sent; the message says why, for a person."""


def parse_identify(body: Any) -> tuple[str | None, str | None]:
    """Return the normalised (email, phone_number) of an identify request body.

    Missing, null, empty and whitespace-only values come back as None. Raises
    InvalidInput when the body is not an object, a value is of the wrong type
    or malformed, or neither value is given.
    """
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    email = normalise_email(body.get("email"))
    phone_number = normalise_phone_number(body.get("phoneNumber"))
    if email is None and phone_number is None:
        raise InvalidInput("Send an email, a phoneNumber, or both.")
    return email, phone_number


def normalise_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("email must be a string or null.")
    email = value.strip().lower()
    if not email:
        return None
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidInput(f"email must be at most {MAX_EMAIL_LENGTH} characters.")
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
