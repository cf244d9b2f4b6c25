"""Detach and erase over HTTP and as commands, on both engines: what they
answer, what they change (rows, ledger, blocked and suppressed values), and
that bad input changes nothing."""

import os
import pty
import subprocess
import sys
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from answers import post, state, view
from conftest import ROOT
from guard import Guard
from invariants import (
    assert_invariants,
    assert_ledger_explains,
    ledger_events,
    live_rows,
)
from models import Contact, Event, SuppressedValue, db

ERASURE_KEY = b"tests-erasure-key-0123"
REQUEST_ID = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


def family(client: FlaskClient) -> None:
    """Customer 1: rows 1-3 joined by the phone 5550 (row 1 holds only it),
    and customer 4 merged into it by a request that paired doc@ with 5550."""
    post(client, None, "5550")
    post(client, "marty@hillvalley.edu", "5550")
    post(client, "jennifer@hillvalley.edu", "5550")
    post(client, "doc@hillvalley.edu", "8880")
    post(client, "doc@hillvalley.edu", "5550")


def check_table(app: Flask) -> None:
    with app.app_context():
        rows = live_rows(db.session())
        assert_invariants(rows, detached=True)
        assert_ledger_explains(rows, ledger_events(db.session()))


def test_detaching_the_shared_phone_splits_what_only_it_joined(
    app: Flask, client: FlaskClient
) -> None:
    family(client)

    response = client.post(
        "/customers/2/detach",
        json={"phoneNumber": "555-0"},
        headers={"X-Request-ID": REQUEST_ID},
    )

    assert response.status_code == 200
    assert response.get_json() == {
        "contacts": [
            view(2, ["marty@hillvalley.edu"], [], []),
            view(3, ["jennifer@hillvalley.edu"], [], []),
            view(4, ["doc@hillvalley.edu"], ["8880"], []),
        ],
        "dryRun": False,
    }
    found = client.get("/events?after=5").get_json()["events"]
    assert [
        (e["type"], e["customerId"], e["contactIds"], e.get("previousCustomerId"))
        for e in found
    ] == [
        ("customer.detached", 1, [1], None),
        ("customer.split", 2, [2], 1),
        ("customer.split", 3, [3], 1),
        ("customer.split", 4, [4], 1),
    ]
    assert {e["requestId"] for e in found} == {REQUEST_ID}
    every = client.get("/events?limit=100").get_json()["events"]
    assert all(e["phoneNumber"] != "5550" for e in every)
    assert client.get("/customers/1").status_code == 404
    check_table(app)


def test_a_merge_whose_values_both_remain_keeps_the_customers_together(
    app: Flask, client: FlaskClient
) -> None:
    family(client)

    response = client.post(
        "/customers/1/detach", json={"email": "jennifer@hillvalley.edu"}
    )

    assert response.status_code == 200
    assert response.get_json() == {
        "contacts": [
            view(
                1,
                ["marty@hillvalley.edu", "doc@hillvalley.edu"],
                ["5550", "8880"],
                [2, 3, 4],
            )
        ],
        "dryRun": False,
    }
    found = client.get("/events?after=5").get_json()["events"]
    assert [(e["type"], e["contactIds"]) for e in found] == [("customer.detached", [])]
    check_table(app)


def test_a_dry_run_answers_as_the_detach_would_and_changes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    family(client)
    before = state(app)

    dry = client.post(
        "/customers/1/detach",
        json={"phoneNumber": "5550", "dryRun": True, "block": True},
    )

    assert dry.status_code == 200
    assert state(app) == before
    done = client.post(
        "/customers/1/detach", json={"phoneNumber": "5550", "block": True}
    )
    assert done.get_json() == {**dry.get_json(), "dryRun": False}


def test_a_detached_and_blocked_value_is_ignored_from_then_on(
    client: FlaskClient,
) -> None:
    family(client)
    client.post("/customers/1/detach", json={"phoneNumber": "5550", "block": True})

    answer = post(client, "marty@hillvalley.edu", "5550")

    assert answer["ignored"] == [{"field": "phoneNumber", "reason": "blocked"}]
    assert answer["contact"] == view(2, ["marty@hillvalley.edu"], [], [])
    listed = client.get("/blocked-values").get_json()["blockedValues"]
    assert {"field": "phoneNumber", "value": "5550"} in [
        {"field": v["field"], "value": v.get("value")} for v in listed
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"email": "marty@hillvalley.edu", "phoneNumber": "5550"},
        {},
        {"phoneNumber": "55"},
        {"email": "not an address"},
        {"email": "marty@hillvalley.edu", "block": "yes"},
        {"email": "marty@hillvalley.edu", "dryRun": 1},
        ["marty@hillvalley.edu"],
    ],
)
def test_a_bad_detach_body_is_a_400_problem_and_changes_nothing(
    app: Flask, client: FlaskClient, body: Any
) -> None:
    family(client)
    before = state(app)

    response = client.post("/customers/1/detach", json=body)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert state(app) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/customers/99/detach", 404),
        ("/customers/2147483648/detach", 404),
        ("/customers/1/detach", 422),
    ],
)
def test_detaching_from_no_customer_or_a_value_it_lacks_changes_nothing(
    app: Flask, client: FlaskClient, path: str, status: int
) -> None:
    family(client)
    before = state(app)

    response = client.post(path, json={"email": "biff@hillvalley.edu"})

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert state(app) == before


def test_erasing_deletes_every_row_and_every_copy_of_the_values(
    app: Flask, client: FlaskClient
) -> None:
    family(client)
    post(client, "lorraine@hillvalley.edu", "7770")
    with app.app_context():
        db.session().execute(
            update(Contact).where(Contact.id == 2).values(deleted_at=func.now())
        )
        db.session().commit()

    response = client.delete("/customers/4")

    assert response.status_code == 200
    assert response.get_json() == {
        "erasedContactIds": [1, 2, 3, 4],
        "suppressed": 0,
        "dryRun": False,
    }
    assert client.get("/customers/1").status_code == 404
    assert client.get("/customers/1/history").status_code == 404
    rows, events, _, suppressed = state(app)
    assert [row[0] for row in rows] == [5]
    assert suppressed == 0
    erased_values = {
        "marty@hillvalley.edu",
        "jennifer@hillvalley.edu",
        "doc@hillvalley.edu",
        "5550",
        "8880",
    }
    assert not erased_values & {value for event in events for value in event[1:]}
    last = client.get("/events?after=6").get_json()["events"]
    assert [
        (e["type"], e["customerId"], e["contactIds"], e["email"], e["phoneNumber"])
        for e in last
    ] == [("customer.erased", 1, [1, 2, 3, 4], None, None)]
    check_table(app)


def test_suppressed_values_are_kept_only_as_keyed_hashes_and_ignored_from_then_on(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None, erasure_key=ERASURE_KEY)
    family(client)

    response = client.delete("/customers/1?suppress=true")

    assert response.get_json() == {
        "erasedContactIds": [1, 2, 3, 4],
        "suppressed": 5,
        "dryRun": False,
    }
    with app.app_context():
        digests = db.session().scalars(select(SuppressedValue.digest)).all()
    assert len(digests) == 5
    assert all(
        len(d) == 64 and "hillvalley" not in d and "5550" not in d for d in digests
    )
    replayed = client.post(
        "/identify", json={"email": "doc@hillvalley.edu", "phoneNumber": "8880"}
    )
    assert replayed.status_code == 422
    assert replayed.get_json()["ignored"] == [
        {"field": "email", "reason": "suppressed"},
        {"field": "phoneNumber", "reason": "suppressed"},
    ]
    other = post(client, "marty@hillvalley.edu", "1234")
    assert other["ignored"] == [{"field": "email", "reason": "suppressed"}]
    found = client.post("/customers/lookup", json={"phoneNumber": "5550"})
    assert found.status_code == 422


def test_suppress_without_an_erasure_key_is_refused_and_erases_nothing(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None)
    family(client)
    before = state(app)

    response = client.delete("/customers/1?suppress=true")

    assert response.status_code == 422
    assert "ERASURE_KEY" in response.get_json()["detail"]
    assert state(app) == before


@pytest.mark.parametrize("query", ["?suppress=yes", "?dryRun=1", "?dryRun="])
def test_an_erase_with_a_bad_switch_is_a_400_problem_and_erases_nothing(
    app: Flask, client: FlaskClient, query: str
) -> None:
    family(client)
    before = state(app)

    response = client.delete(f"/customers/1{query}")

    assert response.status_code == 400
    assert state(app) == before


def test_a_dry_run_erase_answers_as_the_erase_would_and_changes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None, erasure_key=ERASURE_KEY)
    family(client)
    before = state(app)

    dry = client.delete("/customers/3?dryRun=true&suppress=true")

    assert dry.status_code == 200
    assert state(app) == before
    done = client.delete("/customers/3?suppress=true")
    assert done.get_json() == {**dry.get_json(), "dryRun": False}


def test_every_detach_and_erase_answer_says_whether_it_was_a_dry_run(
    client: FlaskClient,
) -> None:
    family(client)
    detach = {"phoneNumber": "5550"}

    answers = [
        client.post("/customers/1/detach", json={**detach, "dryRun": True}),
        client.post("/customers/1/detach", json={**detach, "dryRun": False}),
        client.delete("/customers/4?dryRun=true"),
        client.delete("/customers/4"),
    ]

    assert [answer.get_json()["dryRun"] for answer in answers] == [
        True,
        False,
        True,
        False,
    ]


def twenty_rows(client: FlaskClient) -> None:
    """Customer 1: twenty rows joined by the phone 5550."""
    for n in range(20):
        post(client, f"shopper{n}@hillvalley.edu", "5550")


@pytest.mark.parametrize(
    ("method", "path", "body", "named", "accepted"),
    [
        ("DELETE", "/customers/1?dry_run=true", None, '"dry_run"', "dryRun"),
        ("DELETE", "/customers/1?dryrun=true", None, '"dryrun"', "dryRun"),
        ("DELETE", "/customers/1?dryRun=true&force=1", None, '"force"', "dryRun"),
        ("DELETE", "/customers/1", {"dryRun": True}, "no body", "query"),
        (
            "POST",
            "/customers/1/detach?dryRun=true",
            {"phoneNumber": "5550"},
            '"dryRun"',
            "no query parameters",
        ),
        (
            "POST",
            "/customers/1/detach",
            {"phoneNumber": "5550", "dryrun": True},
            '"dryrun"',
            "dryRun",
        ),
        (
            "POST",
            "/customers/1/detach",
            {"phoneNumber": "5550", "dry_run": True},
            '"dry_run"',
            "dryRun",
        ),
    ],
)
def test_a_misspelt_or_misplaced_dry_run_is_a_400_that_names_it_and_changes_nothing(
    app: Flask,
    client: FlaskClient,
    method: str,
    path: str,
    body: Any,
    named: str,
    accepted: str,
) -> None:
    twenty_rows(client)
    before = state(app)

    response = client.open(path, method=method, json=body)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    detail = response.get_json()["detail"]
    assert named in detail and accepted in detail, detail
    assert state(app) == before
    customer = client.get("/customers/1").get_json()["contact"]
    assert len(customer["secondaryContactIds"]) == 19


@pytest.mark.parametrize(
    "query",
    ["?dryRun=true&dryRun=false", "?suppress=false&suppress=true"],
)
def test_an_erase_switch_given_twice_is_a_400_and_erases_nothing(
    app: Flask, client: FlaskClient, query: str
) -> None:
    family(client)
    before = state(app)

    response = client.delete(f"/customers/1{query}")

    assert response.status_code == 400
    assert "more than once" in response.get_json()["detail"]
    assert state(app) == before


def test_an_erased_customers_ids_are_never_given_to_new_rows(
    app: Flask, client: FlaskClient
) -> None:
    post(client, "marty@hillvalley.edu", "5550")
    post(client, "doc@hillvalley.edu", "8880")
    client.delete("/customers/2")

    answer = post(client, "biff@hillvalley.edu", "7770")

    assert answer["contact"]["primaryContactId"] == 3
    history = client.get("/customers/3/history").get_json()["events"]
    assert [e["type"] for e in history] == ["customer.created"]


def test_a_split_off_customers_history_goes_back_to_the_customer_it_left(
    client: FlaskClient,
) -> None:
    family(client)
    client.post("/customers/1/detach", json={"phoneNumber": "5550"})

    history = client.get("/customers/4/history").get_json()["events"]

    types = [e["type"] for e in history]
    assert types[0] == "customer.created"
    assert "customer.merged" in types
    assert types[-1] == "customer.split"


def test_a_split_off_customers_history_holds_only_the_events_of_its_own_rows(
    client: FlaskClient,
) -> None:
    post(client, "marty@hillvalley.edu", "5550")
    post(client, "biff@hillvalley.edu", "7770")
    post(client, "marty@hillvalley.edu", "7770")
    client.post("/customers/1/detach", json={"phoneNumber": "7770"})
    post(client, "marty@hillvalley.edu", "8880")

    kept = history(client, 1)
    left = history(client, 2)

    assert [(e["type"], e["customerId"]) for e in kept] == [
        ("customer.created", 1),
        ("customer.detached", 1),
        ("customer.split", 1),
        ("customer.contact_added", 1),
    ]
    assert [(e["type"], e["customerId"]) for e in left] == [
        ("customer.created", 2),
        ("customer.merged", 1),
        ("customer.split", 2),
    ]


def marty_and_george(client: FlaskClient) -> None:
    """Marty (row 1) and George (row 2), merged by the family email (row 3
    pairs it with Marty's phone, then a request pairs it with George's);
    George then brings a new phone (row 4, under customer 1). Support
    detaches the family email, which leaves rows 1 and 3 (Marty) and rows 2
    and 4 (George) apart. Events: 1 and 2 created, 3 row 3 added, 4 the
    merge, 5 row 4 added, 6 the detach, 7 and 8 the splits."""
    post(client, "marty@hillvalley.edu", "5551111")
    post(client, "george@hillvalley.edu", "5552222")
    post(client, "family@hillvalley.edu", "5551111")
    post(client, "family@hillvalley.edu", "5552222")
    post(client, "george@hillvalley.edu", "5553333")
    response = client.post(
        "/customers/2/detach", json={"email": "family@hillvalley.edu"}
    )
    assert [c["primaryContactId"] for c in response.get_json()["contacts"]] == [1, 2]


def history(client: FlaskClient, contact_id: int, limit: int = 100) -> list[Any]:
    """Every event of the customer's history, read page by page."""
    events: list[Any] = []
    after = 0
    while True:
        page = client.get(
            f"/customers/{contact_id}/history?after={after}&limit={limit}"
        ).get_json()
        events += page["events"]
        if page["next"] is None:
            return events
        after = page["next"]


def test_after_a_split_each_history_shows_only_the_values_its_customer_holds(
    client: FlaskClient,
) -> None:
    marty_and_george(client)

    marty = history(client, 1)
    george = history(client, 2)

    assert [(e["id"], e["email"], e["phoneNumber"]) for e in marty] == [
        (1, "marty@hillvalley.edu", "5551111"),
        (3, None, "5551111"),
        (6, None, None),
        (7, None, None),
    ]
    assert [(e["id"], e["email"], e["phoneNumber"]) for e in george] == [
        (2, "george@hillvalley.edu", "5552222"),
        (4, None, "5552222"),
        (5, "george@hillvalley.edu", "5553333"),
        (8, None, None),
    ]
    # The feed is the ledger as it is: it withholds nothing.
    assert client.get("/events?after=4&limit=1").get_json()["events"][0]["email"] == (
        "george@hillvalley.edu"
    )


def test_a_filtered_history_pages_without_gaps_or_repeats(
    client: FlaskClient,
) -> None:
    marty_and_george(client)

    pages = [
        client.get(f"/customers/4/history?limit=2&after={after}").get_json()
        for after in (0, 4)
    ]

    assert [[e["id"] for e in page["events"]] for page in pages] == [[2, 4], [5, 8]]
    assert [page["next"] for page in pages] == [4, None]
    assert [e["id"] for e in history(client, 4, limit=1)] == [2, 4, 5, 8]


def test_corrections_are_counted_in_the_metrics(client: FlaskClient) -> None:
    family(client)
    client.post("/customers/1/detach", json={"phoneNumber": "5550", "dryRun": True})
    client.post("/customers/1/detach", json={"phoneNumber": "5550"})
    client.delete("/customers/4")

    metrics = client.get("/metrics").get_data(as_text=True)

    assert 'customer_corrections_total{operation="detach"}' in metrics
    assert 'customer_corrections_total{operation="erase"}' in metrics
    assert "customer_splits_total" in metrics


def test_support_commands_detach_and_erase_and_say_what_they_did(
    app: Flask, client: FlaskClient
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None, erasure_key=ERASURE_KEY)
    family(client)
    runner = app.test_cli_runner()

    dry = runner.invoke(
        args=["customers", "detach", "2", "--phone-number", "555 0", "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert "Would detach" in dry.output and "Rows would be deleted: [1]" in dry.output
    assert "5550" not in dry.output
    done = runner.invoke(args=["customers", "detach", "2", "--phone-number", "5550"])
    assert "Detached" in done.output and "customer 4: rows [4]" in done.output
    erased = runner.invoke(args=["customers", "erase", "4", "--suppress", "--yes"])
    assert erased.exit_code == 0, erased.output
    assert (
        "Erased customer 4." in erased.output
        and "Suppressed 2 value(s)." in erased.output
    )
    events = client.get("/events?after=5").get_json()["events"]
    assert [e["type"] for e in events][-1] == "customer.erased"
    assert all(e["requestId"] is None for e in events)
    check_table(app)


@pytest.mark.parametrize(
    "args",
    [
        ["customers", "detach", "1"],
        ["customers", "detach", "1", "--email", "a@b.c", "--phone-number", "5550"],
        ["customers", "detach", "1", "--phone-number", "55"],
        ["customers", "detach", "1", "--email", "biff@hillvalley.edu"],
        ["customers", "detach", "99", "--phone-number", "5550"],
        ["customers", "erase", "99", "--yes"],
        ["customers", "erase", "1", "--suppress", "--yes"],
        ["customers", "erase", "1", "--reason", "a\tb", "--yes"],
    ],
)
def test_support_commands_refuse_bad_input_and_change_nothing(
    app: Flask, client: FlaskClient, args: list[str]
) -> None:
    app.config["GUARD"] = Guard(builtin=True, limits=None)
    family(client)
    before = state(app)

    result = app.test_cli_runner().invoke(args=args)

    assert result.exit_code != 0
    assert state(app) == before


def events_after(client: FlaskClient, after: int) -> list[dict[str, Any]]:
    return client.get(f"/events?after={after}&limit=100").get_json()["events"]


def reasons(app: Flask) -> dict[int, str | None]:
    """Every event's reason by id, read from the table."""
    with app.app_context():
        found = db.session().execute(select(Event.id, Event.reason))
        return {event_id: reason for event_id, reason in found}


def test_a_detach_stores_its_trimmed_reason_on_every_event_it_appends(
    client: FlaskClient,
) -> None:
    family(client)

    response = client.post(
        "/customers/1/detach", json={"phoneNumber": "5550", "reason": " TICKET-4711 "}
    )

    assert response.status_code == 200
    appended = events_after(client, 5)
    assert [e["type"] for e in appended] == ["customer.detached"] + [
        "customer.split"
    ] * 3
    assert {e["reason"] for e in appended} == {"TICKET-4711"}
    assert all("reason" not in e for e in events_after(client, 0)[:5])


def test_an_erasure_stores_its_reason_on_its_event(client: FlaskClient) -> None:
    family(client)

    response = client.delete("/customers/4?reason=GDPR%2017%20%C3%A9")

    assert response.status_code == 200
    (erased,) = events_after(client, 5)
    assert (erased["type"], erased["reason"]) == ("customer.erased", "GDPR 17 é")


def test_a_reason_of_200_characters_once_trimmed_is_stored_whole(
    app: Flask, client: FlaskClient
) -> None:
    family(client)
    reason = "é" * 200

    response = client.post(
        "/customers/1/detach",
        json={"email": "doc@hillvalley.edu", "reason": f"  {reason}\u3000"},
    )

    assert response.status_code == 200
    assert set(reasons(app).values()) == {None, reason}


@pytest.mark.parametrize(
    "reason",
    ["", "   ", "x" * 201, "line\nbreak", "tab\there", "nul\x00", "\ud800", 42, None],
)
def test_a_bad_detach_reason_is_a_400_that_changes_nothing(
    app: Flask, client: FlaskClient, reason: Any
) -> None:
    family(client)
    before = state(app)

    response = client.post(
        "/customers/1/detach", json={"phoneNumber": "5550", "reason": reason}
    )

    assert response.status_code == 400
    assert response.get_json()["detail"].startswith("reason must ")
    assert state(app) == before


@pytest.mark.parametrize(
    "query", ["reason=", "reason=%20", "reason=a%0Ab", "reason=" + "x" * 201]
)
def test_a_bad_erasure_reason_is_a_400_that_erases_nothing(
    app: Flask, client: FlaskClient, query: str
) -> None:
    family(client)
    before = state(app)

    response = client.delete(f"/customers/1?{query}")

    assert response.status_code == 400
    assert response.get_json()["detail"].startswith("reason must ")
    assert state(app) == before


def test_erasing_a_customer_nulls_the_reasons_of_the_detaches_it_took_part_in(
    app: Flask, client: FlaskClient
) -> None:
    """Customer 1 (rows 1-4) loses jennifer's email (R1), then the phone that
    joined it (R2), which splits it into customers 2, 3 and 4; customer 2
    later loses marty's phone (R3), and an unrelated customer 6 a phone (R4).
    Erasing customer 4 nulls R1 and R2 (on every event of those detaches,
    the other parts' included: a reason may name the person) and keeps R3
    and R4, and its own reason."""
    family(client)
    post(client, "marty@hillvalley.edu", "6660")
    post(client, "biff@hillvalley.edu", "7770")
    post(client, "biff@hillvalley.edu", "7771")
    detaches = [
        ("/customers/1/detach", {"email": "jennifer@hillvalley.edu"}, "R1"),
        ("/customers/1/detach", {"phoneNumber": "5550"}, "R2"),
        ("/customers/2/detach", {"phoneNumber": "6660"}, "R3"),
        ("/customers/7/detach", {"phoneNumber": "7771"}, "R4"),
    ]
    for path, body, reason in detaches:
        response = client.post(path, json={**body, "reason": reason})
        assert response.status_code == 200, response.get_json()
    before = reasons(app)
    assert {r for r in before.values() if r} == {"R1", "R2", "R3", "R4"}
    assert client.get("/customers/4").get_json()["contact"]["secondaryContactIds"] == []

    response = client.delete("/customers/4?reason=GDPR-1")

    assert response.status_code == 200
    after = reasons(app)
    erased_id = max(after)
    assert after.pop(erased_id) == "GDPR-1"
    assert after == {
        event_id: None if reason in {"R1", "R2"} else reason
        for event_id, reason in before.items()
    }
    check_table(app)


def test_a_dry_run_erasure_keeps_every_reason(app: Flask, client: FlaskClient) -> None:
    family(client)
    client.post("/customers/1/detach", json={"phoneNumber": "5550", "reason": "R1"})
    before = reasons(app)

    response = client.delete("/customers/4?dryRun=true&reason=GDPR-1")

    assert response.status_code == 200
    assert reasons(app) == before


def test_support_commands_store_their_reason_and_refuse_a_bad_one(
    app: Flask, client: FlaskClient
) -> None:
    family(client)
    post(client, "biff@hillvalley.edu", "7770")
    runner = app.test_cli_runner()
    before = state(app)

    bad = runner.invoke(
        args=["customers", "detach", "1", "--phone-number", "5550", "--reason", " "]
    )

    assert bad.exit_code != 0 and "reason must be 1 to 200" in bad.output
    assert state(app) == before
    detached = runner.invoke(
        args=["customers", "detach", "1", "--phone-number", "5550", "--reason", "T-1"]
    )
    assert detached.exit_code == 0, detached.output
    erased = runner.invoke(args=["customers", "erase", "5", "--reason", "T-2", "--yes"])
    assert erased.exit_code == 0, erased.output
    assert "T-1" not in detached.output and "T-2" not in erased.output
    appended = events_after(client, 6)
    assert [(e["type"], e.get("reason")) for e in appended] == [
        ("customer.detached", "T-1"),
        ("customer.split", "T-1"),
        ("customer.split", "T-1"),
        ("customer.split", "T-1"),
        ("customer.erased", "T-2"),
    ]


def erase_on_a_terminal(
    database_url: str, contact_id: int, answer: str
) -> subprocess.CompletedProcess[str]:
    """`flask --app app customers erase CONTACT_ID` run as an operator runs it,
    its stdin a terminal (a pseudo-terminal), typing `answer` and Enter."""
    terminal, process_end = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "customers", "erase"]
            + [str(contact_id)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url},
            stdin=process_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(terminal, f"{answer}\n".encode())
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(process_end)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_erasing_on_a_terminal_says_what_would_go_then_no_keeps_the_customer(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    family(client)
    before = state(app)

    done = erase_on_a_terminal(database_url, 4, "n")

    assert done.returncode != 0
    assert "Would erase customer 1." in done.stdout
    assert "Erase customer 1? This cannot be undone. [y/N]" in done.stdout
    assert "Nothing was erased." in done.stderr
    assert state(app) == before


def test_erasing_on_a_terminal_erases_after_yes(
    app: Flask, client: FlaskClient, database_url: str
) -> None:
    family(client)

    done = erase_on_a_terminal(database_url, 4, "y")

    assert done.returncode == 0, done.stderr
    assert "Erase customer 1? This cannot be undone. [y/N]" in done.stdout
    assert "Erased customer 1." in done.stdout
    assert client.get("/customers/4").status_code == 404
    check_table(app)


def test_erasing_without_a_terminal_is_refused_unless_yes(
    app: Flask, client: FlaskClient
) -> None:
    family(client)
    before = state(app)
    runner = app.test_cli_runner()

    piped = runner.invoke(args=["customers", "erase", "4"], input="y\n")

    assert piped.exit_code != 0
    assert "add --yes" in piped.output and "Nothing was erased." in piped.output
    assert state(app) == before
    dry = runner.invoke(args=["customers", "erase", "4", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "Would erase customer 1." in dry.output
    assert state(app) == before
    done = runner.invoke(args=["customers", "erase", "4", "--yes"])
    assert done.exit_code == 0, done.output
    assert "Erased customer 1." in done.output
    assert client.get("/customers/4").status_code == 404
