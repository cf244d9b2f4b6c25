"""POST /customers/holders and `flask customers holders`: the customers that
hold a value, blocked or not, so that support can detach an old placeholder
that lookup refuses. On both engines."""

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from answers import assert_problem, post, state, view
from guard import Guard

pytestmark = pytest.mark.quick

PLACEHOLDER = "0000000000"
MARTY = "marty@hillvalley.edu"
GEORGE = "george@hillvalley.edu"


def strangers_joined_by(client: FlaskClient, phone: str) -> None:
    """Marty (row 1) and George (row 2) typed the same phone: one customer."""
    post(client, MARTY, phone)
    post(client, GEORGE, phone)


def holders(client: FlaskClient, body: dict[str, Any]) -> Any:
    response = client.post("/customers/holders", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_placeholder_stored_before_the_builtin_rules_is_found_and_detached(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=False, limits=None)
    strangers_joined_by(client, "000-000-0000")
    app.config["GUARD"] = Guard(builtin=True, limits=None)

    lookup = client.post("/customers/lookup", json={"phoneNumber": PLACEHOLDER})
    found = holders(client, {"phoneNumber": "000 000 0000"})

    assert lookup.status_code == 422
    assert found == {"contacts": [view(1, [MARTY, GEORGE], [PLACEHOLDER], [2])]}
    detached = client.post("/customers/1/detach", json={"phoneNumber": PLACEHOLDER})
    assert detached.status_code == 200
    assert detached.get_json()["contacts"] == [
        view(1, [MARTY], [], []),
        view(2, [GEORGE], [], []),
    ]
    assert holders(client, {"phoneNumber": PLACEHOLDER}) == {"contacts": []}


def test_a_value_the_shop_blocked_is_found_and_detached(
    app: Flask, client: FlaskClient
) -> None:
    strangers_joined_by(client, "5550199")
    blocked = client.post("/blocked-values", json={"phoneNumber": "555-0199"})
    assert blocked.status_code == 201

    lookup = client.post("/customers/lookup", json={"phoneNumber": "5550199"})
    found = holders(client, {"phoneNumber": 5550199})

    assert lookup.status_code == 422
    assert found == {"contacts": [view(1, [MARTY, GEORGE], ["5550199"], [2])]}
    detached = client.post("/customers/2/detach", json={"phoneNumber": "5550199"})
    assert [c["primaryContactId"] for c in detached.get_json()["contacts"]] == [1, 2]
    assert holders(client, {"phoneNumber": "5550199"}) == {"contacts": []}


def test_holders_are_found_by_email_through_any_row_and_the_search_writes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "lorraine@hillvalley.edu", "123456")
    post(client, MARTY, "123456")
    post(client, GEORGE, "919191")
    before = state(app)

    found = holders(client, {"email": " Marty@HillValley.edu "})
    nobody = holders(client, {"email": "doc@hillvalley.edu"})

    assert found == {
        "contacts": [view(1, ["lorraine@hillvalley.edu", MARTY], ["123456"], [2])]
    }
    assert nobody == {"contacts": []}
    assert state(app) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": None, "phoneNumber": None},
        {"email": MARTY, "phoneNumber": "5550199"},
        {"email": "not an address"},
        {"phoneNumber": "55"},
        {"phoneNumber": True},
        {"phoneNumber": "5550199", "dryRun": True},
        {"phone": "5550199"},
        [],
        None,
        "5550199",
    ],
)
def test_a_bad_holders_body_is_a_400_problem(
    app: Flask, client: FlaskClient, body: Any
) -> None:
    strangers_joined_by(client, "5550199")
    before = state(app)

    sent = client.post(
        "/customers/holders", data=json.dumps(body), content_type="application/json"
    )

    assert_problem(sent, 400)
    assert state(app) == before


def test_holders_needs_a_json_body_and_the_api_key(
    app: Flask, client: FlaskClient
) -> None:
    text = client.post("/customers/holders", data="x", content_type="text/plain")
    assert_problem(text, 415)
    app.config["API_KEYS"] = ["secret"]
    body = {"phoneNumber": "5550199"}
    assert_problem(client.post("/customers/holders", json=body), 401)
    keyed = client.post(
        "/customers/holders", json=body, headers={"Authorization": "Bearer secret"}
    )
    assert keyed.status_code == 200


def test_the_holders_command_lists_customers_with_values_masked(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=False, limits=None)
    strangers_joined_by(client, PLACEHOLDER)
    app.config["GUARD"] = Guard(builtin=True, limits=None)
    runner = app.test_cli_runner()

    masked = runner.invoke(
        args=["customers", "holders", "--phone-number", "000-000-0000"]
    )
    shown = runner.invoke(
        args=["customers", "holders", "--email", MARTY, "--show-values"]
    )

    assert masked.exit_code == 0, masked.output
    assert masked.output.splitlines() == [
        "1 customer(s) hold the phoneNumber ******0000.",
        "  customer 1: rows [1, 2], 2 email(s), 1 phone(s)",
        "    emails: m***@hillvalley.edu, g***@hillvalley.edu",
        "    phones: ******0000",
    ]
    assert shown.exit_code == 0, shown.output
    assert f"emails: {MARTY}, {GEORGE}" in shown.output
    assert f"phones: {PLACEHOLDER}" in shown.output
    nobody = runner.invoke(args=["customers", "holders", "--email", "doc@x.com"])
    assert nobody.output == "0 customer(s) hold the email d***@x.com.\n"


@pytest.mark.parametrize(
    "args",
    [
        ["customers", "holders"],
        ["customers", "holders", "--email", MARTY, "--phone-number", "5550199"],
        ["customers", "holders", "--phone-number", "55"],
        ["customers", "holders", "--email", "not an address"],
    ],
)
def test_the_holders_command_refuses_bad_input(
    app: Flask, client: FlaskClient, args: list[str]
) -> None:
    result = app.test_cli_runner().invoke(args=args)

    assert result.exit_code != 0
