"""POST /identify and GET /health over HTTP: parsing, normalisation, errors."""

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from answers import assert_problem
from app import create_app
from models import Contact, db

pytestmark = pytest.mark.quick


def contact_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Contact)) or 0


def identify(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/identify", json=body)
    assert response.status_code == 200, response.get_json()
    contact: dict[str, Any] = response.get_json()["contact"]
    return contact


def test_identify_answers_with_the_consolidated_contact(client: FlaskClient) -> None:
    client.post("/identify", json={"email": "doc@fluxkart.com", "phoneNumber": 123456})

    response = client.post(
        "/identify", json={"email": "emmett@hillvalley.edu", "phoneNumber": "123456"}
    )

    assert response.status_code == 200
    assert response.get_json() == {
        "contact": {
            "primaryContactId": 1,
            "primaryContatctId": 1,
            "emails": ["doc@fluxkart.com", "emmett@hillvalley.edu"],
            "phoneNumbers": ["123456"],
            "secondaryContactIds": [2],
        }
    }


BAD_REQUESTS: list[tuple[str, dict[str, Any], int]] = [
    ("not JSON", {"data": "{email:", "content_type": "application/json"}, 400),
    ("empty body", {"data": "", "content_type": "application/json"}, 400),
    ("JSON array", {"json": [{"email": "doc@fluxkart.com"}]}, 400),
    ("JSON string", {"json": "doc@fluxkart.com"}, 400),
    ("JSON null", {"data": "null", "content_type": "application/json"}, 400),
    ("text content type", {"data": '{"phoneNumber": "1234"}'}, 415),
    (
        "form content type",
        {"data": {"phoneNumber": "1234"}, "content_type": "multipart/form-data"},
        415,
    ),
    ("no fields", {"json": {}}, 400),
    ("both null", {"json": {"email": None, "phoneNumber": None}}, 400),
    ("both blank", {"json": {"email": "  ", "phoneNumber": ""}}, 400),
    ("only unknown fields", {"json": {"name": "Doc"}}, 400),
    ("email a number", {"json": {"email": 42}}, 400),
    ("email a list", {"json": {"email": ["doc@fluxkart.com"]}}, 400),
    ("phone a boolean", {"json": {"phoneNumber": True}}, 400),
    ("phone a float", {"json": {"phoneNumber": 123456.0}}, 400),
    ("phone negative", {"json": {"phoneNumber": -123456}}, 400),
    ("phone a list", {"json": {"phoneNumber": ["123456"]}}, 400),
    ("phone an object", {"json": {"phoneNumber": {"n": "123456"}}}, 400),
    ("email without @", {"json": {"email": "doc.fluxkart.com"}}, 400),
    ("email without domain dot", {"json": {"email": "doc@fluxkart"}}, 400),
    ("email with spaces", {"json": {"email": "doc brown@fluxkart.com"}}, 400),
    ("email over 254", {"json": {"email": "d" * 64 + "@" + "a" * 186 + ".com"}}, 400),
    ("phone with letters", {"json": {"phoneNumber": "12ab56"}}, 400),
    ("phone too short", {"json": {"phoneNumber": "123"}}, 400),
    ("phone too long", {"json": {"phoneNumber": "1234567890123456"}}, 400),
    ("phone two plus signs", {"json": {"phoneNumber": "++123456"}}, 400),
    ("phone plus inside", {"json": {"phoneNumber": "12+3456"}}, 400),
    ("good email, bad phone", {"json": {"email": "a@b.co", "phoneNumber": "x"}}, 400),
    (
        "body over 64 KiB",
        {"json": {"email": "doc@fluxkart.com", "pad": "x" * 70_000}},
        413,
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_a_problem_document_and_stores_nothing(
    app: Flask, client: FlaskClient, request_kwargs: dict[str, Any], status: int
) -> None:
    response = client.post("/identify", **request_kwargs)

    assert_problem(response, status)
    assert contact_count(app) == 0


def test_invalid_json_detail_says_what_is_wrong(client: FlaskClient) -> None:
    response = client.post(
        "/identify", data='{"email": }', content_type="application/json"
    )

    assert "not valid JSON" in response.get_json()["detail"]


def test_too_large_body_detail_names_the_limit(client: FlaskClient) -> None:
    response = client.post("/identify", json={"pad": "x" * 70_000})

    assert "64 KiB" in response.get_json()["detail"]


def test_wrong_method_on_a_known_path_is_405_with_allow(client: FlaskClient) -> None:
    response = client.get("/identify")

    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_unknown_path_is_404(client: FlaskClient) -> None:
    assert_problem(client.get("/contacts"), 404)


@pytest.mark.parametrize("path", ["/customers/\uff11", "/customers/\u0661/history"])
def test_ids_in_paths_are_ascii_digits_only(client: FlaskClient, path: str) -> None:
    client.post("/identify", json={"email": "doc@fluxkart.com"})

    assert_problem(client.get(path), 404)


def test_unexpected_error_is_a_500_problem_that_leaks_nothing(
    database_url: str,
) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")

    assert_problem(response, 500)
    assert "secret" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ({"email": "  Doc@FluxKart.COM  "}, {"emails": ["doc@fluxkart.com"]}),
        ({"phoneNumber": 123456}, {"phoneNumbers": ["123456"]}),
        ({"phoneNumber": "98765-43201"}, {"phoneNumbers": ["9876543201"]}),
        ({"phoneNumber": " +1 (555) 123.4567 "}, {"phoneNumbers": ["+15551234567"]}),
        ({"phoneNumber": 0}, None),
    ],
)
def test_values_are_normalised_before_they_are_stored(
    client: FlaskClient, given: dict[str, Any], stored: dict[str, Any] | None
) -> None:
    response = client.post("/identify", json=given)

    if stored is None:
        assert_problem(response, 400)
        return
    contact = response.get_json()["contact"]
    for key, value in stored.items():
        assert contact[key] == value


def test_integer_and_string_phone_numbers_are_the_same_customer(
    client: FlaskClient,
) -> None:
    first = identify(client, email="doc@fluxkart.com", phoneNumber=123456)

    second = identify(client, phoneNumber="123-456")

    assert second == first


def test_email_case_and_whitespace_do_not_make_a_new_customer(
    client: FlaskClient,
) -> None:
    first = identify(client, email="doc@fluxkart.com")

    assert identify(client, email=" DOC@fluxkart.com") == first


@pytest.mark.parametrize(
    ("given", "absent"),
    [
        ({"email": "doc@fluxkart.com"}, {}),
        ({"email": "doc@fluxkart.com"}, {"phoneNumber": None}),
        ({"email": "doc@fluxkart.com"}, {"phoneNumber": ""}),
        ({"phoneNumber": "123456"}, {}),
        ({"phoneNumber": "123456"}, {"email": None}),
        ({"phoneNumber": "123456"}, {"email": "   "}),
    ],
)
def test_missing_null_and_blank_values_all_mean_not_given(
    app: Flask, client: FlaskClient, given: dict[str, Any], absent: dict[str, Any]
) -> None:
    first = identify(client, email="doc@fluxkart.com", phoneNumber="123456")

    assert identify(client, **given, **absent) == first
    assert contact_count(app) == 1


def test_unknown_fields_are_ignored(client: FlaskClient) -> None:
    contact = identify(client, email="doc@fluxkart.com", orderId=77, name="Doc")

    assert contact["emails"] == ["doc@fluxkart.com"]


def test_json_content_type_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/identify",
        data='{"email": "doc@fluxkart.com"}',
        content_type="application/json; charset=utf-8",
    )

    assert response.status_code == 200


def test_misspelt_primary_key_is_kept_as_an_alias(client: FlaskClient) -> None:
    contact = identify(client, email="doc@fluxkart.com")

    assert contact["primaryContatctId"] == contact["primaryContactId"] == 1


def test_health_is_ok_when_the_database_answers(client: FlaskClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize(
    "unreachable_url",
    [
        "sqlite:////nonexistent-directory/contacts.db",
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2",
    ],
)
def test_unreachable_database_is_a_503_problem(unreachable_url: str) -> None:
    client = create_app({"SQLALCHEMY_DATABASE_URI": unreachable_url}).test_client()

    for response in (
        client.get("/health"),
        client.post("/identify", json={"email": "doc@fluxkart.com"}),
    ):
        assert_problem(response, 503)
        assert "database" in response.get_json()["detail"]


def test_an_email_spelt_in_another_unicode_form_finds_the_same_customer(
    client: FlaskClient,
) -> None:
    composed = identify(client, email="\u00e9mile@fluxkart.com", phoneNumber="5550001")

    decomposed = identify(client, email="E\u0301MILE@fluxkart.com")

    assert decomposed == composed
    assert composed["emails"] == ["\u00e9mile@fluxkart.com"]


def test_an_email_the_database_holds_is_not_checked_again(
    app: Flask, client: FlaskClient
) -> None:
    """Every stored email was checked when it was stored, so a request with it
    skips the check: here a row stored by hand with an address today's check
    refuses (a domain that cannot receive mail) is still found."""
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO contact (email, link_precedence, created_at, updated_at)"
                " VALUES ('old@shop.local', 'primary', :now, :now)"
            ),
            {"now": datetime.now(UTC)},
        )
        db.session.commit()

    found = identify(client, email="old@shop.local")
    refused = client.post("/identify", json={"email": "new@shop.local"})

    assert found["emails"] == ["old@shop.local"]
    assert_problem(refused, 400)
