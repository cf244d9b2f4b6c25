"""`flask --app app contacts export`: every customer once, as /identify
answers it, with its primary's createdAt, to a file or to stdout."""

import json
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import text

import exporting
from models import db


def identify(app: Flask, email: str | None, phone: str | None) -> None:
    response = app.test_client().post(
        "/identify", json={"email": email, "phoneNumber": phone}
    )
    assert response.status_code == 200


def expected(app: Flask) -> list[dict[str, Any]]:
    """Every customer's view from GET /customers/{id}, with the createdAt of
    its primary row, ascending primary id."""
    client = app.test_client()
    with app.app_context():
        primaries = db.session.execute(
            text(
                "SELECT id, created_at FROM contact WHERE linked_id IS NULL ORDER BY id"
            )
        ).all()
    found = []
    for primary, created_at in primaries:
        view = client.get(f"/customers/{primary}").get_json()["contact"]
        view.pop("primaryContatctId")
        if isinstance(created_at, str):
            created_at = created_at.replace(" ", "T") + "Z"
        else:
            created_at = created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        found.append({**view, "createdAt": created_at})
    return found


def test_an_export_lists_every_customer_once_as_identify_answers_it(
    app: Flask, tmp_path: Path
) -> None:
    for email, phone in [
        ("lorraine@hillvalley.edu", "123456"),
        ("mcfly@hillvalley.edu", "123456"),
        ("george@hillvalley.edu", "919191"),
        ("biffsucks@hillvalley.edu", "717171"),
        ("george@hillvalley.edu", "717171"),
        ("doc@fluxkart.com", None),
    ]:
        identify(app, email, phone)
    path = tmp_path / "customers.ndjson"

    result = app.test_cli_runner().invoke(args=["contacts", "export", str(path)])

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == expected(app)
    assert [line["primaryContactId"] for line in lines] == [1, 3, 5]
    assert "Exported 3 customers." in result.output


def test_an_export_to_a_dash_writes_only_the_customers_to_stdout(
    app: Flask,
) -> None:
    identify(app, "doc@fluxkart.com", "123456")

    result = app.test_cli_runner().invoke(args=["contacts", "export", "-"])

    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == expected(app)
    assert "Exported 1 customers." in result.stderr


def test_an_export_reads_the_table_a_page_at_a_time(
    app: Flask, tmp_path: Path, monkeypatch: Any
) -> None:
    """Pages of PAGE primaries, each from where the last ended: customers on
    either side of a page's end are each listed once."""
    monkeypatch.setattr(exporting, "PAGE", 2)
    for number in range(5):
        identify(app, f"c{number}@shop.com", f"55500{number}")
    identify(app, "c0@shop.com", "555004")
    pages: list[int] = []

    path = tmp_path / "customers.ndjson"
    with app.app_context(), db.engine.connect() as connection, path.open("w") as out:
        count = exporting.export(connection, out, progress=pages.append)

    assert count == 4
    assert pages == [2, 2]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == expected(app)


def test_an_export_that_cannot_write_its_file_says_so_in_one_line(
    app: Flask, tmp_path: Path
) -> None:
    result = app.test_cli_runner().invoke(
        args=["contacts", "export", str(tmp_path / "missing" / "out.ndjson")]
    )

    assert result.exit_code == 1
    assert "cannot write" in result.output
