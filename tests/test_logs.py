"""One JSON line per request on stdout, with no email or phone number in clear."""

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import g
from flask.testing import FlaskClient

from app import create_app
from live import live_service
from masking import json_formatter, mask, request_line

EMAIL = "lorraine@hillvalley.edu"
PHONE = "5551234567"


def log_lines(captured: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("doc@fluxkart.com", "d***@fluxkart.com"),
        ("call 9876543456 now", "call ******3456 now"),
        ("+1 (555) 123-4567", "*************4567"),
        ("pin 1234", "pin ****"),
        ("after 8 attempts", "after 8 attempts"),
    ],
)
def test_mask_hides_emails_and_phone_numbers(text: str, masked: str) -> None:
    assert mask(text) == masked


def test_each_request_is_logged_as_one_json_line_with_its_fields(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/identify", json={"email": EMAIL, "phoneNumber": PHONE})
    response = client.post(
        "/identify", json={"email": "mcfly@hillvalley.edu", "phoneNumber": PHONE}
    )

    (first, second) = log_lines(capsys.readouterr().out)
    assert second["request_id"] == response.headers["X-Request-ID"]
    assert second["method"] == "POST"
    assert second["path"] == "/identify"
    assert second["status"] == 200
    assert second["duration_ms"] >= 0
    assert second["outcome"] == "linked"
    assert second["primary_contact_id"] == 1
    assert second["secondary_contact_ids"] == [2]
    assert second["time"].endswith("+00:00")
    assert first["outcome"] == "created"


def test_ids_in_paths_stay_legible_in_the_log_line(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.get("/customers/1234567/history")

    (line,) = log_lines(capsys.readouterr().out)
    assert line["status"] == 404
    assert line["contact_id"] == 1234567


@pytest.mark.parametrize(
    "sent", ["3f0c9a4d-8e1b-4c2a-9f6e-5d4c3b2a1f0e", "3F0C9A4D8E1B4C2A9F6E5D4C3B2A1F0E"]
)
def test_a_uuid_request_id_is_taken_from_the_header_and_echoed(
    client: FlaskClient, capsys: pytest.CaptureFixture[str], sent: str
) -> None:
    response = client.get("/health", headers={"X-Request-ID": sent})

    assert response.headers["X-Request-ID"] == sent
    assert log_lines(capsys.readouterr().out)[0]["request_id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        None,
        "",
        "has spaces",
        "doc@fluxkart.com",
        "x" * 129,
        "5559876543",
        "555-987.6543",
        "cust_4479000111",
        "order-42.retry-1",
        "3f0c9a4d-8e1b-4c2a-9f6e-5d4c3b2a1f0e-4479000111",
    ],
)
def test_request_id_is_generated_unless_a_uuid_is_sent(
    client: FlaskClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    first = client.get("/health", headers=headers).headers["X-Request-ID"]
    second = client.get("/health", headers=headers).headers["X-Request-ID"]

    assert first != second
    assert not sent or sent not in first


def test_rejected_input_is_logged_without_the_values_sent(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/identify", json={"email": "not-an-email@", "phoneNumber": "12ab3456"})

    output = capsys.readouterr().out
    assert log_lines(output)[0]["status"] == 400
    assert "not-an-email" not in output
    assert "12ab3456" not in output


def test_errors_are_logged_with_the_request_id_and_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'c.db'}"})

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError(f"cannot store {EMAIL} with {PHONE}")

    request_id = "b0b0b0b0-0000-4000-8000-000000000001"
    response = app.test_client().get("/boom", headers={"X-Request-ID": request_id})

    output = capsys.readouterr().out
    error, access = log_lines(output)
    assert response.status_code == 500
    assert error["level"] == "ERROR"
    assert error["request_id"] == request_id
    assert "l***@hillvalley.edu" in error["exc_info"]
    assert access["request_id"] == request_id
    assert EMAIL not in output
    assert PHONE not in output


def test_gunicorn_writes_exactly_one_json_line_per_request_without_clear_values(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "stdout.log"
    bodies = [
        {"email": EMAIL, "phoneNumber": PHONE},
        {"email": "mcfly@hillvalley.edu", "phoneNumber": PHONE},
        {"email": "george@hillvalley.edu", "phoneNumber": "919191"},
        {"email": "george@hillvalley.edu", "phoneNumber": PHONE},
        {"email": "bad@", "phoneNumber": "0"},
    ]
    with log_file.open("w") as stdout, live_service(tmp_path, stdout=stdout) as url:
        ids = [
            requests.post(f"{url}/identify", json=body, timeout=10).headers[
                "X-Request-ID"
            ]
            for body in bodies
        ]

    output = log_file.read_text()
    # Every line must parse as JSON; /health lines come from waiting for boot.
    lines = [line for line in log_lines(output) if line.get("path") == "/identify"]
    assert [line["request_id"] for line in lines] == ids
    assert [line.get("outcome") for line in lines] == [
        "created",
        "linked",
        "created",
        "merged",
        None,
    ]
    for value in (
        EMAIL,
        PHONE,
        "mcfly@hillvalley.edu",
        "george@hillvalley.edu",
        "919191",
    ):
        assert value not in output


def test_merges_and_reads_log_one_line_naming_customers_not_values(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/identify", json={"email": EMAIL, "phoneNumber": "919191"})
    client.post(
        "/identify", json={"email": "biff@hillvalley.edu", "phoneNumber": PHONE}
    )
    capsys.readouterr()

    client.post("/identify", json={"email": EMAIL, "phoneNumber": PHONE})
    client.post("/customers/lookup", json={"email": EMAIL, "phoneNumber": PHONE})
    client.get("/customers/2")
    client.get("/customers/2/history")
    client.get("/events")

    output = capsys.readouterr().out
    merge, lookup, customer, history, feed = log_lines(output)
    assert merge["outcome"] == "merged"
    assert merge["absorbed_customer_ids"] == [2]
    assert lookup["customer_ids"] == [1]
    assert customer["customer_ids"] == [1]
    assert (history["path"], feed["path"]) == ("/customers/2/history", "/events")
    assert EMAIL not in output and PHONE not in output and "919191" not in output


REASON = "Ticket ABC: Lorraine Baines asked"


def test_a_correction_reason_never_reaches_a_log_line(
    client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/identify", json={"email": EMAIL, "phoneNumber": PHONE})
    client.post(
        "/identify", json={"email": "mcfly@hillvalley.edu", "phoneNumber": PHONE}
    )
    capsys.readouterr()

    for body in (
        {"email": EMAIL, "dryRun": True, "reason": REASON},
        {"email": EMAIL, "reason": REASON},
        {"email": EMAIL, "reason": f"{REASON}\nmore"},
        {"email": EMAIL, "reason": f"{REASON}\x00"},
    ):
        client.post("/customers/2/detach", json=body)
    for query in ("dryRun=true&", "", "suppress=maybe&"):
        client.delete(f"/customers/2?{query}reason={REASON.replace(' ', '%20')}")
    client.delete("/customers/2?reason=" + "x" * 201)

    output = capsys.readouterr().out
    requests = [line for line in log_lines(output) if line["message"] == "request"]
    statuses = [line["status"] for line in requests]
    assert statuses == [200, 200, 400, 400, 200, 200, 400, 400]
    assert "Lorraine Baines" not in output and "Ticket ABC" not in output


def test_the_line_per_request_is_the_line_the_generic_formatter_writes(
    client: FlaskClient,
) -> None:
    fields = {
        "method": "POST",
        "path": "/customers/1234567/history",
        "status": 200,
        "duration_ms": 1.5,
        "contact_id": 1234567,
        "secondary_contact_ids": [2, 3],
        "note": f"{EMAIL} ünï",
    }
    record = logging.makeLogRecord({"levelname": "INFO", "msg": "request", **fields})
    at = datetime.fromtimestamp(record.created, UTC)

    with client.application.test_request_context():
        g.request_id = "b0b0b0b0-0000-4000-8000-000000000001"
        generic = json_formatter().format(record)
        line = request_line(fields, at=at, request_id=g.request_id)

    assert line == generic
    assert EMAIL not in line
