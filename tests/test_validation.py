"""validation.check_email's shortcut for plain addresses answers as the
email-validator library does for every address."""

from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from validation import InvalidInput, check_email

_PARTS = st.text(alphabet="aZ09._-+!'\"<>@[]() é\\", max_size=70)
_DOMAINS = st.sampled_from(
    [
        "example.com",
        "shop.example.com",
        "localhost",
        "example.test",
        "xn--bcher-kva.example",
        "-bad.example.com",
        "a..b.com",
        "a" * 64 + ".com",
        "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com",
        "com",
        "1.2.3.4",
        "",
    ]
)


def _library(email: str) -> str | None:
    try:
        return validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def _ours(email: str) -> str | None:
    try:
        return check_email(email)
    except InvalidInput:
        return None


@settings(max_examples=500)
@given(st.one_of(st.emails(), st.builds("{}@{}".format, _PARTS, _DOMAINS), _PARTS))
def test_email_check_accepts_and_normalises_as_the_library(email: str) -> None:
    assert _ours(email) == _library(email)


def test_email_check_rejects_with_the_library_message() -> None:
    for email in ("a@localhost", "a" * 250 + "@example.com", "a..b@example.com"):
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError as error:
            expected = f"email is not a valid address: {error}"
        try:
            check_email(email)
        except InvalidInput as error:
            assert str(error) == expected
        else:
            raise AssertionError(f"{email} was accepted")
