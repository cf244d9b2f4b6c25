"""The reads of the customer record: lookup (which never writes), a customer
by any of its contact ids, its history through merges, the event feed, and
their paging and errors."""

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from answers import assert_problem
from models import Contact, Event, db

pytestmark = pytest.mark.quick


def post(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200
    return response.get_json()["contact"]


def counts(app: Flask) -> tuple[int, int]:
    with app.app_context():
        contacts = db.session.scalar(select(func.count()).select_from(Contact))
        events = db.session.scalar(select(func.count()).select_from(Event))
    return contacts or 0, events or 0


def worked_example(client: FlaskClient) -> None:
    post(client, "lorraine@hillvalley.edu", "123456")
    post(client, "mcfly@hillvalley.edu", "123456")
    post(client, "george@hillvalley.edu", "919191")
    post(client, "biffsucks@hillvalley.edu", "717171")
    post(client, "george@hillvalley.edu", "717171")


def test_lookup_of_unknown_values_answers_no_customer_and_writes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "doc@fluxkart.com", "123456")
    before = counts(app)

    response = client.post(
        "/customers/lookup",
        json={"email": "new@fluxkart.com", "phoneNumber": "5550199"},
    )

    assert response.status_code == 200
    assert response.get_json() == {"contacts": []}
    assert counts(app) == before


def test_lookup_answers_each_customer_the_values_belong_to_without_merging(
    app: Flask, client: FlaskClient
) -> None:
    george = post(client, "george@hillvalley.edu", "919191")
    biff = post(client, "biffsucks@hillvalley.edu", "717171")
    before = counts(app)

    response = client.post(
        "/customers/lookup",
        json={"email": " George@HillValley.edu ", "phoneNumber": "717-171"},
    )

    assert response.get_json() == {"contacts": [george, biff]}
    assert counts(app) == before
    one = client.post("/customers/lookup", json={"phoneNumber": 919191})
    assert one.get_json() == {"contacts": [george]}


def test_lookup_answers_as_identify_would_for_a_known_customer(
    client: FlaskClient,
) -> None:
    worked_example(client)

    found = client.post("/customers/lookup", json={"email": "lorraine@hillvalley.edu"})

    assert found.get_json()["contacts"] == [
        post(client, "lorraine@hillvalley.edu", None)
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"email": "not an email"}, 400),
        ({"phoneNumber": True}, 400),
        ([], 400),
    ],
)
def test_lookup_refuses_what_identify_refuses(
    client: FlaskClient, body: Any, status: int
) -> None:
    assert_problem(client.post("/customers/lookup", json=body), status)


def test_lookup_needs_a_json_body(client: FlaskClient) -> None:
    response = client.post("/customers/lookup", data="x", content_type="text/plain")
    assert_problem(response, 415)


def test_a_customer_is_found_by_any_of_its_contact_ids(client: FlaskClient) -> None:
    worked_example(client)
    george = post(client, "george@hillvalley.edu", None)

    for contact_id in (3, 4):
        response = client.get(f"/customers/{contact_id}")
        assert response.status_code == 200
        assert response.get_json() == {"contact": george}


def test_an_unknown_contact_id_is_a_404_problem(client: FlaskClient) -> None:
    post(client, "doc@fluxkart.com", None)

    for path in ("/customers/2", "/customers/2/history", "/customers/0"):
        assert_problem(client.get(path), 404)


def test_history_follows_the_customer_through_the_merges_it_absorbed(
    client: FlaskClient,
) -> None:
    worked_example(client)
    post(client, "biff@hillvalley.edu", "717171")

    response = client.get("/customers/4/history")

    page = response.get_json()
    assert [(e["type"], e["customerId"]) for e in page["events"]] == [
        ("customer.created", 3),
        ("customer.created", 4),
        ("customer.merged", 3),
        ("customer.contact_added", 3),
    ]
    assert page["next"] is None
    other = client.get("/customers/1/history").get_json()["events"]
    assert [e["type"] for e in other] == ["customer.created", "customer.contact_added"]


def test_history_and_feed_page_with_after_and_limit(client: FlaskClient) -> None:
    worked_example(client)

    first = client.get("/customers/3/history?limit=2").get_json()
    second = client.get(
        f"/customers/3/history?limit=2&after={first['next']}"
    ).get_json()

    assert [e["id"] for e in first["events"]] == [3, 4]
    assert first["next"] == 4
    assert [e["id"] for e in second["events"]] == [5]
    assert second["next"] is None
    feed = client.get("/events?after=2&limit=2").get_json()
    assert ([e["id"] for e in feed["events"]], feed["next"]) == ([3, 4], 4)
    assert client.get("/events?after=5").get_json() == {"events": [], "next": None}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "after=-1",
        "after=abc",
        "after=1.5",
        "limit=",
    ],
)
def test_bad_paging_parameters_are_a_400_problem(
    client: FlaskClient, query: str
) -> None:
    post(client, "doc@fluxkart.com", None)

    assert_problem(client.get(f"/events?{query}"), 400)
    assert_problem(client.get(f"/customers/1/history?{query}"), 400)


def test_the_reads_need_the_api_key_when_one_is_set(app: Flask) -> None:
    app.config["API_KEYS"] = ["secret"]
    client = app.test_client()

    for response in (
        client.post("/customers/lookup", json={"email": "doc@fluxkart.com"}),
        client.get("/customers/1"),
        client.get("/customers/1/history"),
        client.get("/events"),
    ):
        assert_problem(response, 401)
    authorised = client.get("/events", headers={"Authorization": "Bearer secret"})
    assert authorised.status_code == 200


def test_history_keeps_the_events_of_a_soft_deleted_primary_it_took_over_from(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "a@shop.com", "1111")
    post(client, "b@shop.com", "1111")
    with app.app_context():
        db.session.execute(
            update(Contact).where(Contact.id == 1).values(deleted_at=datetime.now(UTC))
        )
        db.session.commit()
    post(client, None, "1111")

    events = client.get("/customers/2/history").get_json()["events"]

    assert [(e["type"], e["customerId"]) for e in events] == [
        ("customer.created", 1),
        ("customer.contact_added", 1),
        ("customer.primary_changed", 2),
    ]
    assert_problem(client.get("/customers/1/history"), 404)
