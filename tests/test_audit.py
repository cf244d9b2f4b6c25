"""`flask contacts audit` on a real populated database, on both engines."""

from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, update

from guard import Guard
from models import Contact, db
from reconcile import Limits

pytestmark = pytest.mark.quick


def identify(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def populated(app: Flask, client: FlaskClient) -> Flask:
    """Customers of several sizes, a merge, a refused link and a deleted row."""
    app.config["GUARD"] = Guard(builtin=True, limits=Limits(max_partners=3))
    # Customer 1: one email, three phones (rows 1 to 3); a fourth phone is
    # refused by the limit, and its link_refused event pairs nothing.
    for phone in ("5550001", "5550002", "5550003"):
        identify(client, "a@x.com", phone)
    refused = identify(client, "a@x.com", "5550004")
    assert refused["ignored"] == [
        {"field": "phoneNumber", "reason": "limit", "limit": "MAX_PARTNERS_PER_VALUE"}
    ]
    # Customer 4: one phone, two emails (rows 4 and 5).
    identify(client, "b1@x.com", "6660001")
    identify(client, "b2@x.com", "6660001")
    # Customers 6 and 7 merge: d@x.com and 7770002 are paired only by the
    # merge event.
    identify(client, "d@x.com", "7770001")
    identify(client, "e@x.com", "7770002")
    merged = identify(client, "d@x.com", "7770002")
    assert merged["contact"]["secondaryContactIds"] == [7]
    # Customer 8: an email alone.
    identify(client, "c@x.com", None)
    # Row 9, soft-deleted: not counted anywhere.
    identify(client, "f@x.com", "8880001")
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(
            update(Contact).where(Contact.id == 9).values(deleted_at=datetime.now(UTC))
        )
    return app


def run_audit(app: Flask, *args: str) -> Result:
    result = app.test_cli_runner().invoke(args=["contacts", "audit", *args])
    assert result.exit_code == 0, result.output
    return result


def tables(output: str) -> tuple[list[list[str]], list[list[str]]]:
    """The rows of the customers table and of the values table, as words."""
    blocks = output.split("\n\n")
    customers = [line.split() for line in blocks[1].splitlines()[2:]]
    values = [line.split() for line in blocks[2].splitlines()[2:] if line]
    return customers, values


def test_largest_customers_by_distinct_values_then_rows(populated: Flask) -> None:
    output = run_audit(populated).output

    assert output.startswith("8 live contacts in 4 customers.\n")
    customers, _ = tables(output)
    # customer, rows, emails, phones: 1 and 6 hold 4 values each, 1 in more rows.
    assert customers == [
        ["1", "3", "1", "3"],
        ["6", "2", "2", "2"],
        ["4", "2", "2", "1"],
        ["8", "1", "1", "0"],
    ]


def test_values_with_most_partners_in_rows_and_merge_events(
    populated: Flask,
) -> None:
    output = run_audit(populated, "--show-values").output

    _, values = tables(output)
    # kind, partners, value; ties: emails first, then by value.
    assert values == [
        ["email", "3", "a@x.com"],
        ["email", "2", "d@x.com"],
        ["phoneNumber", "2", "6660001"],
        ["phoneNumber", "2", "7770002"],
        ["email", "1", "b1@x.com"],
        ["email", "1", "b2@x.com"],
        ["email", "1", "e@x.com"],
        ["phoneNumber", "1", "5550001"],
        ["phoneNumber", "1", "5550002"],
        ["phoneNumber", "1", "5550003"],
    ]
    assert "5550004" not in output  # refused: never paired
    assert "f@x.com" not in output  # deleted


def test_top_limits_both_lists(populated: Flask) -> None:
    customers, values = tables(run_audit(populated, "--top", "2").output)

    assert [row[0] for row in customers] == ["1", "6"]
    assert [row[:2] for row in values] == [["email", "3"], ["email", "2"]]


def test_values_are_masked_unless_asked_for(populated: Flask) -> None:
    output = run_audit(populated).output

    _, values = tables(output)
    assert values[:4] == [
        ["email", "3", "a***@x.com"],
        ["email", "2", "d***@x.com"],
        ["phoneNumber", "2", "*******"],
        ["phoneNumber", "2", "*******"],
    ]
    for clear in ("a@x.com", "d@x.com", "b1@x.com", "6660001", "7770002", "5550001"):
        assert clear not in output


def test_an_empty_database(app: Flask) -> None:
    output = run_audit(app).output

    assert output.startswith("0 live contacts in 0 customers.\n")
    assert tables(output) == ([], [])


def test_top_must_be_at_least_one(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["contacts", "audit", "--top", "0"])

    assert result.exit_code == 2
    assert "--top" in result.output


def test_three_statements_whatever_the_size(populated: Flask) -> None:
    """Set-based: the database groups and sorts; no statement per row."""
    statements: list[str] = []
    with populated.app_context():
        engine = db.engine

        def count(*args: Any) -> None:
            statements.append(args[2])

        event.listen(engine, "before_cursor_execute", count)
        try:
            run_audit(populated, "--top", "1000")
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 3
    assert all("GROUP BY" in s or "count(" in s for s in statements)
