"""Protection against over-merging: blocked values (built in and the shop's),
the limits on a customer and a value, what the answer says was ignored, and
the settings the service refuses."""

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

import guard
from answers import assert_problem, sample
from guard import builtin_rule
from models import Contact, Event, db
from reconcile import EMAIL, PHONE_NUMBER, Ignored, Limits
from settings import ConfigurationError

pytestmark = pytest.mark.quick


def post(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def rows(app: Flask) -> list[tuple[str | None, str | None]]:
    with app.app_context():
        found = db.session.execute(
            select(Contact.email, Contact.phone_number).order_by(Contact.id)
        )
        return [tuple(row) for row in found]


def events(app: Flask) -> list[Any]:
    with app.app_context():
        return list(db.session.execute(select(Event).order_by(Event.id)).scalars())


def limited(app: Flask, **limits: Any) -> None:
    app.config["GUARD"] = guard.Guard(builtin=True, limits=Limits(**limits))


@pytest.mark.parametrize(
    ("field", "value", "blocked"),
    [
        ("phoneNumber", "000000", True),
        ("phoneNumber", "9999999999", True),
        ("phoneNumber", "+1111111", True),
        ("phoneNumber", "00000", False),
        ("phoneNumber", "12345678", True),
        ("phoneNumber", "1234567890", True),
        ("phoneNumber", "0123456789", True),
        ("phoneNumber", "9876543210", True),
        ("phoneNumber", "1234567", False),
        ("phoneNumber", "123456", False),
        ("phoneNumber", "5551234567", False),
        ("phoneNumber", "+10000000000", True),
        ("phoneNumber", "+440000000000", True),
        ("phoneNumber", "+3531111111", True),
        ("phoneNumber", "+4912345678", True),
        ("phoneNumber", "+4930123456", False),
        ("phoneNumber", "+15551234567", False),
        ("phoneNumber", "10000000000", False),
        ("email", "test@test.com", True),
        ("email", "n.a@shop.com", True),
        ("email", "no-reply@shop.com", True),
        ("email", "tester@shop.com", False),
        ("email", "doc@test.com", False),
    ],
)
def test_builtin_rules_block_placeholders_and_nothing_else(
    field: str, value: str, blocked: bool
) -> None:
    assert (builtin_rule(field, value) is not None) == blocked


def test_a_placeholder_written_with_a_country_code_is_ignored(
    app: Flask, client: FlaskClient
) -> None:
    first = post(client, "doc@fluxkart.com", "+1 000 000 0000")
    second = post(client, "emmett@hillvalley.edu", "+44 0000 000000")

    assert first["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    assert second["contact"]["primaryContactId"] == 2
    assert rows(app) == [("doc@fluxkart.com", None), ("emmett@hillvalley.edu", None)]


def test_a_placeholder_phone_is_ignored_and_the_email_served(
    app: Flask, client: FlaskClient
) -> None:
    first = post(client, "doc@fluxkart.com", "0000000000")
    second = post(client, "emmett@hillvalley.edu", "000-000-0000")

    assert first["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    assert first["contact"]["phoneNumbers"] == []
    assert second["contact"]["primaryContactId"] == 2
    assert rows(app) == [("doc@fluxkart.com", None), ("emmett@hillvalley.edu", None)]
    assert [event.type for event in events(app)] == ["customer.created"] * 2


def test_nothing_usable_left_is_a_422_that_stores_nothing(
    app: Flask, client: FlaskClient
) -> None:
    response = client.post(
        "/identify", json={"email": "TEST@shop.com", "phoneNumber": "12345678"}
    )

    assert_problem(response, 422)
    assert response.get_json()["ignored"] == [
        {"field": "email", "reason": "blocked"},
        {"field": "phoneNumber", "reason": "blocked"},
    ]
    assert rows(app) == []
    assert_problem(
        client.post("/customers/lookup", json={"phoneNumber": "000000"}), 422
    )


def test_a_422_is_serialised_as_every_other_problem_document(
    client: FlaskClient,
) -> None:
    unusable = client.post("/identify", json={"email": "test@shop.com"})
    bad = client.post("/identify", json={"email": 42})

    for response in (unusable, bad):
        body = response.get_json()
        assert list(body)[:4] == ["type", "status", "title", "detail"]
        compact = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        assert response.get_data(as_text=True).strip() == compact
        assert response.mimetype == "application/problem+json"
    assert unusable.get_json()["ignored"] == [{"field": "email", "reason": "blocked"}]


def test_the_builtin_rules_can_be_turned_off(app: Flask, client: FlaskClient) -> None:
    app.config["GUARD"] = guard.Guard(builtin=False, limits=Limits())

    answer = post(client, "test@shop.com", "0000000000")

    assert "ignored" not in answer
    assert rows(app) == [("test@shop.com", "0000000000")]
    listed = client.get("/blocked-values").get_json()["blockedValues"]
    assert listed == []


def test_a_blocked_value_of_the_shop_is_neither_matched_nor_stored(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "front-desk@shop.com", "5550100")
    added = client.post("/blocked-values", json={"phoneNumber": "555-0100"})
    assert added.status_code == 201
    blocked = added.get_json()
    assert (blocked["field"], blocked["value"], blocked["builtin"]) == (
        "phoneNumber",
        "5550100",
        False,
    )
    assert added.headers["Location"] == f"/blocked-values/{blocked['id']}"

    answer = post(client, "stranger@shop.com", "5550100")
    looked_up = client.post("/customers/lookup", json={"phoneNumber": "5550100"})

    assert answer["contact"]["primaryContactId"] == 2
    assert answer["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    assert_problem(looked_up, 422)
    assert rows(app)[-1] == ("stranger@shop.com", None)

    assert client.delete(f"/blocked-values/{blocked['id']}").status_code == 204
    again = post(client, "stranger@shop.com", "5550100")
    assert "ignored" not in again
    assert again["contact"]["primaryContactId"] == 1


def test_the_list_shows_the_builtin_rules_then_the_shops_values(
    client: FlaskClient,
) -> None:
    client.post("/blocked-values", json={"email": " Front-Desk@Shop.com "})

    listed = client.get("/blocked-values").get_json()["blockedValues"]

    assert [item["id"] for item in listed[:3]] == [
        "builtin:repeated-digit",
        "builtin:digit-run",
        "builtin:placeholder-email",
    ]
    assert all(item["builtin"] for item in listed[:3])
    assert listed[3]["value"] == "front-desk@shop.com"
    assert listed[3]["createdAt"].endswith("Z")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "a@shop.com", "phoneNumber": "5550100"},
        {"email": "not an email"},
        {"phoneNumber": "12ab"},
        {"phoneNumber": ""},
        [],
    ],
)
def test_a_bad_blocked_value_is_a_400_that_stores_nothing(
    client: FlaskClient, body: Any
) -> None:
    assert_problem(client.post("/blocked-values", json=body), 400)
    assert len(client.get("/blocked-values").get_json()["blockedValues"]) == 3


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/blocked-values", {"phoneNumber": "5550100", "note": "x"}, '"note"'),
        ("/blocked-values?dryRun=true", {"phoneNumber": "5550100"}, '"dryRun"'),
    ],
)
def test_adding_a_blocked_value_with_an_unknown_member_or_parameter_is_a_400(
    client: FlaskClient, path: str, body: Any, named: str
) -> None:
    response = client.post(path, json=body)

    assert_problem(response, 400)
    assert named in response.get_json()["detail"]
    assert len(client.get("/blocked-values").get_json()["blockedValues"]) == 3


@pytest.mark.parametrize(
    ("query", "body"), [("?dryRun=true", None), ("", {"dryRun": True})]
)
def test_deleting_a_blocked_value_with_a_parameter_or_a_body_is_a_400(
    client: FlaskClient, query: str, body: Any
) -> None:
    added = client.post("/blocked-values", json={"phoneNumber": "5550100"})
    value_id = added.get_json()["id"]

    response = client.delete(f"/blocked-values/{value_id}{query}", json=body)

    assert_problem(response, 400)
    listed = client.get("/blocked-values").get_json()["blockedValues"]
    assert [item["id"] for item in listed[3:]] == [value_id]


def block_phones(client: FlaskClient, count: int) -> list[int]:
    """Block `count` phone numbers; their ids, in order."""
    ids = []
    for n in range(count):
        added = client.post("/blocked-values", json={"phoneNumber": f"555{n:04}"})
        assert added.status_code == 201
        ids.append(added.get_json()["id"])
    return ids


def test_blocked_values_page_with_the_builtin_rules_on_the_first_page_only(
    client: FlaskClient,
) -> None:
    ids = block_phones(client, 5)

    pages = []
    after = 0
    while after is not None:
        page = client.get(f"/blocked-values?after={after}&limit=2").get_json()
        pages.append([item["id"] for item in page["blockedValues"]])
        after = page["next"]

    builtin = [rule.id for rule in guard.BUILTIN_RULES]
    assert pages == [builtin + ids[:2], ids[2:4], ids[4:]]


def test_blocked_values_come_fifty_to_a_page_by_default(client: FlaskClient) -> None:
    ids = block_phones(client, 51)

    first = client.get("/blocked-values").get_json()
    last = client.get(f"/blocked-values?after={first['next']}").get_json()

    assert [item["id"] for item in first["blockedValues"][3:]] == ids[:50]
    assert first["next"] == ids[49]
    assert [item["id"] for item in last["blockedValues"]] == ids[50:]
    assert last["next"] is None


def test_without_the_builtin_rules_the_first_page_holds_only_the_shops_values(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = guard.Guard(builtin=False, limits=None)
    ids = block_phones(client, 1)

    page = client.get("/blocked-values").get_json()

    assert [item["id"] for item in page["blockedValues"]] == ids
    assert page["next"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "after=-1",
        "after=abc",
        "after=2147483648",
        "page=2",
        "limit=1&limit=2",
    ],
)
def test_a_bad_blocked_values_page_is_a_400(client: FlaskClient, query: str) -> None:
    assert_problem(client.get(f"/blocked-values?{query}"), 400)


def test_duplicates_and_builtin_values_conflict(client: FlaskClient) -> None:
    assert (
        client.post("/blocked-values", json={"phoneNumber": "5550100"}).status_code
        == 201
    )

    assert_problem(
        client.post("/blocked-values", json={"phoneNumber": "555 0100"}), 409
    )
    assert_problem(client.post("/blocked-values", json={"phoneNumber": "000000"}), 409)
    assert_problem(client.post("/blocked-values", json={"email": "test@x.com"}), 409)
    assert len(client.get("/blocked-values").get_json()["blockedValues"]) == 4


@pytest.mark.parametrize(
    ("value_id", "status"),
    [("builtin:digit-run", 409), ("999", 404), ("abc", 404), ("99999999999", 404)],
)
def test_builtin_rules_and_unknown_ids_cannot_be_deleted(
    client: FlaskClient, value_id: str, status: int
) -> None:
    assert_problem(client.delete(f"/blocked-values/{value_id}"), status)


def test_a_deleted_blocked_values_id_is_never_given_to_another(
    client: FlaskClient,
) -> None:
    first = client.post("/blocked-values", json={"phoneNumber": "5550100"})
    newest = client.post("/blocked-values", json={"phoneNumber": "5550101"})
    newest_id = newest.get_json()["id"]
    assert client.delete(f"/blocked-values/{newest_id}").status_code == 204

    added = client.post("/blocked-values", json={"phoneNumber": "5550102"})

    assert added.get_json()["id"] not in (first.get_json()["id"], newest_id)
    assert_problem(client.delete(f"/blocked-values/{newest_id}"), 404)
    listed = client.get("/blocked-values").get_json()["blockedValues"]
    assert [item["value"] for item in listed[3:]] == ["5550100", "5550102"]


def test_a_phone_with_too_many_partners_is_dropped_and_the_pair_recorded(
    app: Flask, client: FlaskClient
) -> None:
    limited(app, max_partners=3)
    for n in range(3):
        post(client, f"shopper{n}@shop.com", "5550100")

    answer = post(client, "shopper3@shop.com", "5550100")

    assert answer["ignored"] == [
        {"field": "phoneNumber", "reason": "limit", "limit": "MAX_PARTNERS_PER_VALUE"}
    ]
    assert answer["contact"]["primaryContactId"] == 4
    assert answer["contact"]["phoneNumbers"] == []
    refused = events(app)[-1]
    assert (refused.type, refused.customer_id, refused.contact_ids, refused.reason) == (
        "customer.link_refused",
        4,
        [],
        "limit",
    )
    assert (refused.email, refused.phone_number) == ("shopper3@shop.com", "5550100")
    assert refused.limit_name == "MAX_PARTNERS_PER_VALUE"
    history = client.get("/customers/4/history").get_json()["events"]
    assert history[-1]["type"] == "customer.link_refused"
    assert (history[-1]["reason"], history[-1]["limit"]) == (
        "limit",
        "MAX_PARTNERS_PER_VALUE",
    )
    # A known partner is no new partner: it still links.
    assert "ignored" not in post(client, "shopper0@shop.com", "5550100")


def test_merge_events_count_as_partners(app: Flask, client: FlaskClient) -> None:
    limited(app, max_partners=2)
    post(client, "a@shop.com", "5550001")
    post(client, "b@shop.com", "5550002")
    merged = post(client, "a@shop.com", "5550002")
    assert merged["contact"]["secondaryContactIds"] == [2]

    answer = post(client, "c@shop.com", "5550002")

    assert answer["ignored"] == [
        {"field": "phoneNumber", "reason": "limit", "limit": "MAX_PARTNERS_PER_VALUE"}
    ]


def test_a_customer_stops_growing_at_its_value_limit(
    app: Flask, client: FlaskClient
) -> None:
    limited(app, max_values=4)
    post(client, "a@shop.com", "5550001")
    post(client, "b@shop.com", "5550001")
    post(client, "b@shop.com", "5550002")

    answer = post(client, "c@shop.com", "5550002")

    assert answer["ignored"] == [
        {"field": "phoneNumber", "reason": "limit", "limit": "MAX_VALUES_PER_CUSTOMER"}
    ]
    assert answer["contact"]["primaryContactId"] == 4
    assert len(rows(app)) == 4
    refused = client.get("/events?after=3").get_json()["events"][-1]
    assert (refused["type"], refused["reason"], refused["limit"]) == (
        "customer.link_refused",
        "limit",
        "MAX_VALUES_PER_CUSTOMER",
    )


def test_a_merge_beyond_the_value_limit_is_refused(
    app: Flask, client: FlaskClient
) -> None:
    limited(app, max_values=5)
    post(client, "a@shop.com", "5550001")
    post(client, "a2@shop.com", "5550001")
    post(client, "b@shop.com", "5550002")
    post(client, "b2@shop.com", "5550002")

    answer = post(client, "a@shop.com", "5550002")

    assert answer["contact"]["primaryContactId"] == 1
    assert answer["contact"]["secondaryContactIds"] == [2]
    assert answer["ignored"] == [
        {"field": "phoneNumber", "reason": "limit", "limit": "MAX_VALUES_PER_CUSTOMER"}
    ]
    assert (events(app)[-1].type, events(app)[-1].limit_name) == (
        "customer.link_refused",
        "MAX_VALUES_PER_CUSTOMER",
    )


def test_the_priority_decides_which_value_is_dropped(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = guard.Guard(
        builtin=True, limits=Limits(max_partners=1, priority=("phoneNumber", "email"))
    )
    post(client, "a@shop.com", "5550001")

    answer = post(client, "b@shop.com", "5550001")

    assert answer["ignored"] == [
        {"field": "email", "reason": "limit", "limit": "MAX_PARTNERS_PER_VALUE"}
    ]
    assert answer["contact"]["primaryContactId"] == 1
    assert answer["contact"]["emails"] == ["a@shop.com"]


SETTINGS = (
    "BUILTIN_BLOCKLIST",
    "MAX_VALUES_PER_CUSTOMER",
    "MAX_PARTNERS_PER_VALUE",
    "IDENTIFIER_PRIORITY",
    "ERASURE_KEY",
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_VALUES_PER_CUSTOMER", "0"),
        ("MAX_VALUES_PER_CUSTOMER", "-1"),
        ("MAX_PARTNERS_PER_VALUE", "abc"),
        ("MAX_PARTNERS_PER_VALUE", ""),
        ("IDENTIFIER_PRIORITY", "email"),
        ("IDENTIFIER_PRIORITY", "phone,email"),
        ("BUILTIN_BLOCKLIST", "maybe"),
    ],
)
def test_nonsense_settings_are_refused_with_a_clear_message(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        guard.configured()


def test_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    settings = guard.configured()

    assert settings.builtin
    assert settings.limits == Limits(100, 20, ("email", "phoneNumber"))


def test_ignored_values_and_refused_links_are_counted(
    app: Flask, client: FlaskClient
) -> None:
    def metric(name: str, **labels: str) -> float:

        return sample(client.get("/metrics").get_data(as_text=True), name, **labels)

    limited(app, max_partners=1)
    blocked = metric("identify_ignored_values_total", reason="blocked")
    limit = metric("identify_ignored_values_total", reason="limit")
    refused = metric("identify_refused_links_total")

    post(client, "a@shop.com", "000000")
    post(client, "a@shop.com", "5550001")
    post(client, "b@shop.com", "5550001")

    assert metric("identify_ignored_values_total", reason="blocked") == blocked + 1
    assert metric("identify_ignored_values_total", reason="limit") == limit + 1
    assert metric("identify_refused_links_total") == refused + 1


def test_blocked_counts_survive_in_the_table_not_in_a_process(app: Flask) -> None:
    """The shop's values live in the database: a second app (another worker
    or instance) applies a value the first one added, at once."""
    other = app.test_client()
    client = app.test_client()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Contact)) == 0
    client.post("/blocked-values", json={"email": "shared@shop.com"})

    answer = other.post(
        "/identify", json={"email": "shared@shop.com", "phoneNumber": "5550100"}
    )

    assert answer.get_json()["ignored"] == [{"field": "email", "reason": "blocked"}]


def test_screening_drops_a_builtin_placeholder_only_when_builtin_rules_are_on() -> None:
    on = guard.screen("test@shop.com", "5551234", builtin=True, flagged={})
    off = guard.screen("test@shop.com", "5551234", builtin=False, flagged={})

    assert (on.email, on.phone_number) == (None, "5551234")
    assert on.ignored == (Ignored(EMAIL, "blocked"),)
    assert (off.email, off.phone_number, off.ignored) == (
        "test@shop.com",
        "5551234",
        (),
    )


def test_screening_drops_each_value_the_database_flags_with_the_flags_reason() -> None:
    screened = guard.screen(
        "a@shop.com",
        "5551234",
        builtin=True,
        flagged={EMAIL: "suppressed", PHONE_NUMBER: "blocked"},
    )

    assert not screened.usable
    assert screened.ignored == (
        Ignored(EMAIL, "suppressed"),
        Ignored(PHONE_NUMBER, "blocked"),
    )


def test_screening_lists_the_builtin_drops_before_the_databases() -> None:
    screened = guard.screen(
        "a@shop.com", "1111111", builtin=True, flagged={EMAIL: "blocked"}
    )

    assert screened.ignored == (
        Ignored(PHONE_NUMBER, "blocked"),
        Ignored(EMAIL, "blocked"),
    )


def test_screening_ignores_a_flag_for_a_value_that_was_not_sent() -> None:
    screened = guard.screen(
        None, "5551234", builtin=True, flagged={EMAIL: "suppressed"}
    )

    assert (screened.email, screened.phone_number) == (None, "5551234")
    assert screened.usable
    assert screened.ignored == ()
