"""Random request sequences: the service answers exactly as a small reference
model of the contract's rules, the table keeps every invariant, and replaying
the ledger rebuilds the table's customers."""

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import or_, select

from conftest import empty_database
from guard import Guard
from invariants import (
    assert_invariants,
    assert_ledger_explains,
    ledger_events,
    live_rows,
)
from models import Event, db
from reconcile import Limits
from reference_model import EMAILS, PHONES, LimitedModel, ReferenceModel, examples

pytestmark = pytest.mark.quick


def assert_histories_show_only_held_values(
    client: FlaskClient, model: ReferenceModel
) -> None:
    """Every email and phone in each customer's history is one it holds."""
    for primary in sorted({row.linked_id or row.id for row in model.rows}):
        view = model.view(primary)
        held = {*view["emails"], *view["phoneNumbers"], None}
        after: int | None = 0
        while after is not None:
            page = client.get(
                f"/customers/{primary}/history?limit=100&after={after}"
            ).get_json()
            for event in page["events"]:
                shown = {event["email"], event["phoneNumber"]}
                assert shown <= held, (primary, event)
            after = page["next"]


def spellings(value: str) -> st.SearchStrategy[Any]:
    """Ways a client may send the same value."""
    if "@" in value:
        return st.sampled_from([value, value.upper(), f"  {value} "])
    return st.sampled_from([value, int(value), f"{value[:2]}-{value[2:]}"])


requests_strategy = st.lists(
    st.tuples(
        st.none() | st.sampled_from(EMAILS), st.none() | st.sampled_from(PHONES)
    ).filter(lambda pair: pair != (None, None)),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(requests=requests_strategy, data=st.data())
def test_service_answers_like_the_reference_model_and_keeps_invariants(
    app: Flask, requests: list[tuple[str | None, str | None]], data: st.DataObject
) -> None:
    with app.app_context():
        empty_database()
    client = app.test_client()
    model = ReferenceModel()

    for email, phone in requests:
        body = {
            "email": None if email is None else data.draw(spellings(email)),
            "phoneNumber": None if phone is None else data.draw(spellings(phone)),
        }
        response = client.post("/identify", json=body)

        assert response.status_code == 200
        assert response.get_json()["contact"] == model.identify(email, phone)
        with app.app_context():
            rows = live_rows(db.session())
            assert_invariants(rows)
            assert_ledger_explains(rows, ledger_events(db.session()))


BLOCKED_PHONE = "0000000"


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(
        st.tuples(
            st.none() | st.sampled_from(EMAILS),
            st.none() | st.sampled_from([*PHONES, BLOCKED_PHONE]),
        ).filter(lambda pair: pair != (None, None)),
        min_size=1,
        max_size=14,
    ),
    max_values=st.integers(1, 5),
    max_partners=st.integers(1, 3),
)
def test_the_service_under_limits_and_blocked_values_answers_like_the_model(
    app: Flask,
    requests: list[tuple[str | None, str | None]],
    max_values: int,
    max_partners: int,
) -> None:
    with app.app_context():
        empty_database()
    limits = Limits(max_values, max_partners)
    app.config["GUARD"] = Guard(builtin=True, limits=limits)
    client = app.test_client()
    model = LimitedModel(limits)

    for email, phone in requests:
        response = client.post("/identify", json={"email": email, "phoneNumber": phone})

        blocked = (
            [{"field": "phoneNumber", "reason": "blocked"}]
            if phone == BLOCKED_PHONE
            else []
        )
        phone = None if phone == BLOCKED_PHONE else phone
        if email is None and phone is None:
            assert response.status_code == 422
            assert response.get_json()["ignored"] == blocked
            continue
        assert response.status_code == 200
        answer, ignored = model.identify(email, phone)
        assert response.get_json()["contact"] == answer
        assert response.get_json().get("ignored", []) == blocked + ignored
        with app.app_context():
            rows = live_rows(db.session())
            assert_invariants(rows)
            assert_ledger_explains(rows, ledger_events(db.session()))
    assert_histories_show_only_held_values(client, model.model)


ERASURE_KEY = b"property-test-erasure-key"


def forgotten_values_in_ledger(values: set[tuple[str, str]]) -> list[Any]:
    """Events that still hold one of these values. Needs an app context."""
    columns = {"email": Event.email, "phone": Event.phone_number}
    conditions = [columns[kind] == value for kind, value in values]
    if not conditions:
        return []
    return list(db.session().execute(select(Event.id).where(or_(*conditions))))


def identify_step(
    client: FlaskClient,
    model: ReferenceModel,
    excluded: dict[tuple[str, str], str],
    email: str | None,
    phone: str | None,
) -> None:
    """An identify checked against the model, with the values blocked by a
    detach or suppressed by an erasure ignored for the reason given."""
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    ignored = []
    for kind, field_name, value in (
        ("email", "email", email),
        ("phone", "phoneNumber", phone),
    ):
        reason = excluded.get((kind, value)) if value is not None else None
        if reason is not None:
            ignored.append({"field": field_name, "reason": reason})
    email = None if ("email", email) in excluded else email
    phone = None if ("phone", phone) in excluded else phone
    if email is None and phone is None:
        assert response.status_code == 422
        assert response.get_json()["ignored"] == ignored
        return
    assert response.status_code == 200
    assert response.get_json()["contact"] == model.identify(email, phone)
    assert response.get_json().get("ignored", []) == ignored


@settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.sampled_from(["identify", "identify", "detach", "erase"]),
        min_size=1,
        max_size=16,
    ),
    data=st.data(),
)
def test_detaches_and_erasures_between_identifies_answer_like_the_model(
    app: Flask, steps: list[str], data: st.DataObject
) -> None:
    with app.app_context():
        empty_database()
    app.config["GUARD"] = Guard(builtin=False, limits=None, erasure_key=ERASURE_KEY)
    client = app.test_client()
    model = ReferenceModel()
    # Values a detach blocked ("blocked") or an erasure suppressed ("suppressed").
    excluded: dict[tuple[str, str], str] = {}

    for step in steps:
        ids = [row.id for row in model.rows]
        if step == "identify" or not ids:
            email, phone = data.draw(
                st.tuples(
                    st.none() | st.sampled_from(EMAILS),
                    st.none() | st.sampled_from(PHONES),
                ).filter(lambda pair: pair != (None, None))
            )
            identify_step(client, model, excluded, email, phone)
        elif step == "detach":
            contact_id = data.draw(st.sampled_from(ids) | st.integers(1, 40))
            kind, value = data.draw(
                st.sampled_from(
                    [("email", e) for e in EMAILS] + [("phone", p) for p in PHONES]
                )
            )
            block = data.draw(st.booleans())
            field_name = "email" if kind == "email" else "phoneNumber"
            response = client.post(
                f"/customers/{contact_id}/detach",
                json={field_name: value, "block": block},
            )
            try:
                answer = model.detach(contact_id, kind, value)
            except LookupError:
                assert response.status_code == 404
            except ValueError:
                assert response.status_code == 422
            else:
                assert response.status_code == 200
                assert response.get_json() == {"contacts": answer, "dryRun": False}
                if block:
                    excluded.setdefault((kind, value), "blocked")
                with app.app_context():
                    assert not forgotten_values_in_ledger({(kind, value)})
        else:
            contact_id = data.draw(st.sampled_from(ids) | st.integers(1, 40))
            suppress = data.draw(st.booleans())
            query = "?suppress=true" if suppress else ""
            response = client.delete(f"/customers/{contact_id}{query}")
            try:
                erased, values = model.erase(contact_id)
            except LookupError:
                assert response.status_code == 404
            else:
                assert response.status_code == 200
                assert response.get_json() == {
                    "erasedContactIds": erased,
                    "suppressed": len(values) if suppress else 0,
                    "dryRun": False,
                }
                if suppress:
                    for value in values:
                        excluded.setdefault(value, "suppressed")
                with app.app_context():
                    assert not forgotten_values_in_ledger(values)
        with app.app_context():
            rows = live_rows(db.session())
            assert_invariants(rows, detached=True)
            assert_ledger_explains(rows, ledger_events(db.session()))
    assert_histories_show_only_held_values(client, model)


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(EMAILS), st.sampled_from(PHONES)),
        min_size=3,
        max_size=8,
    ),
    detaches=st.integers(1, 2),
    data=st.data(),
)
def test_after_detaches_every_history_shows_only_values_its_customer_holds(
    app: Flask,
    requests: list[tuple[str, str]],
    detaches: int,
    data: st.DataObject,
) -> None:
    """Requests that send both values often merge customers, and detaching
    one of a customer's values then splits it in about half of the
    sequences: each part's history must show none of the other's values."""
    with app.app_context():
        empty_database()
    client = app.test_client()
    model = ReferenceModel()
    for email, phone in requests:
        response = client.post("/identify", json={"email": email, "phoneNumber": phone})
        assert response.get_json()["contact"] == model.identify(email, phone)

    for _ in range(detaches):
        if not model.rows:
            break
        contact_id = data.draw(st.sampled_from([row.id for row in model.rows]))
        kind, value = data.draw(
            st.sampled_from(
                [
                    (kind, getattr(row, kind))
                    for row in model.customer_of(contact_id)
                    for kind in ("email", "phone")
                    if getattr(row, kind) is not None
                ]
            )
        )
        field_name = "email" if kind == "email" else "phoneNumber"
        response = client.post(
            f"/customers/{contact_id}/detach", json={field_name: value}
        )
        assert response.get_json() == {
            "contacts": model.detach(contact_id, kind, value),
            "dryRun": False,
        }
        assert_histories_show_only_held_values(client, model)
