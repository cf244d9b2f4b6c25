"""Random request sequences: the service answers exactly as a small reference
model of the contract's rules, the table keeps every invariant, and replaying
the ledger rebuilds the table's customers."""

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

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

EMAILS = ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu", "doc@fluxkart.com"]
PHONES = ["123456", "919191", "717171", "5550000"]


@dataclass
class ModelRow:
    id: int
    email: str | None
    phone: str | None
    linked_id: int | None = None


@dataclass
class ReferenceModel:
    """The contract's rules over a list, written to be obviously right, not fast.
    Rows are created in id order, so the oldest row is the lowest id, and the
    list stays in id order. `merged` holds the (email, phone) of every merge
    whose two values have not been forgotten since."""

    rows: list[ModelRow] = field(default_factory=list)
    merged: set[tuple[str, str]] = field(default_factory=set)
    next_id: int = 1

    def identify(self, email: str | None, phone: str | None) -> dict[str, Any]:
        matched = [
            row
            for row in self.rows
            if (email is not None and row.email == email)
            or (phone is not None and row.phone == phone)
        ]
        primaries = sorted({row.linked_id or row.id for row in matched})
        if not primaries:
            return self.view(self.add(email, phone, None))
        oldest, *newer = primaries
        if newer:
            self.merged.add((email, phone))  # type: ignore[arg-type]
        for row in self.rows:
            if row.id in newer or row.linked_id in newer:
                row.linked_id = oldest
        cluster = self.cluster(oldest)
        if (email is not None and email not in [r.email for r in cluster]) or (
            phone is not None and phone not in [r.phone for r in cluster]
        ):
            self.add(email, phone, oldest)
        return self.view(oldest)

    def add(self, email: str | None, phone: str | None, linked_id: int | None) -> int:
        self.rows.append(ModelRow(self.next_id, email, phone, linked_id))
        self.next_id += 1
        return self.next_id - 1

    def customer_of(self, contact_id: int) -> list[ModelRow]:
        """The rows of the customer of `contact_id`; LookupError if none."""
        (row,) = [r for r in self.rows if r.id == contact_id] or [None]
        if row is None:
            raise LookupError(contact_id)
        return self.cluster(row.linked_id or row.id)

    def detach(self, contact_id: int, kind: str, value: str) -> list[dict[str, Any]]:
        """Take the value away, then regroup what remains by shared values and
        merges whose two values remain. ValueError if the customer lacks it."""
        members = self.customer_of(contact_id)
        if value not in [getattr(row, kind) for row in members]:
            raise ValueError(value)
        for row in members:
            if getattr(row, kind) == value:
                other = row.phone if kind == "email" else row.email
                if other is None:
                    self.rows.remove(row)
                else:
                    setattr(row, kind, None)
        self.forget(kind, value)
        groups = [[row] for row in members if row in self.rows]
        joined = True
        while joined:
            joined = False
            for a, b in itertools.combinations(groups, 2):
                if any(self.joins(x, y) for x in a for y in b):
                    groups.remove(b)
                    a.extend(b)
                    joined = True
                    break
        for group in groups:
            primary = min(row.id for row in group)
            for row in group:
                row.linked_id = None if row.id == primary else primary
        return [
            self.view(min(r.id for r in group))
            for group in sorted(groups, key=lambda g: min(r.id for r in g))
        ]

    def joins(self, x: ModelRow, y: ModelRow) -> bool:
        return (
            (x.email is not None and x.email == y.email)
            or (x.phone is not None and x.phone == y.phone)
            or (x.email, y.phone) in self.merged
            or (y.email, x.phone) in self.merged
        )

    def erase(self, contact_id: int) -> tuple[list[int], set[tuple[str, str]]]:
        """Delete the customer's rows; their ids and the values forgotten."""
        members = self.customer_of(contact_id)
        values = set()
        for row in members:
            self.rows.remove(row)
            for kind in ("email", "phone"):
                if getattr(row, kind) is not None:
                    values.add((kind, getattr(row, kind)))
                    self.forget(kind, getattr(row, kind))
        return [row.id for row in members], values

    def forget(self, kind: str, value: str) -> None:
        index = 0 if kind == "email" else 1
        self.merged = {pair for pair in self.merged if pair[index] != value}

    def cluster(self, primary_id: int) -> list[ModelRow]:
        return [r for r in self.rows if primary_id in (r.id, r.linked_id)]

    def view(self, primary_id: int) -> dict[str, Any]:
        cluster = self.cluster(primary_id)
        primary = cluster[0]
        emails: list[str] = []
        phones: list[str] = []
        for row in cluster:
            if row.email is not None and row.email not in emails:
                emails.append(row.email)
            if row.phone is not None and row.phone not in phones:
                phones.append(row.phone)
        return {
            "primaryContactId": primary.id,
            "primaryContatctId": primary.id,
            "emails": emails,
            "phoneNumbers": phones,
            "secondaryContactIds": [row.id for row in cluster[1:]],
        }


class LimitedModel:
    """The reference model with the limits, written from the contract's words:
    a request that would give a customer more than max_values values, or a
    value more than max_partners partners (in rows or merges), is served as
    if sent without its lower-priority value, and says which limit it met
    (the values one when both would break)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.model = ReferenceModel()

    def identify(
        self, email: str | None, phone: str | None
    ) -> tuple[dict[str, object], list[dict[str, str]]]:
        trial = copy.deepcopy(self.model)
        answer = trial.identify(email, phone)
        broken = None
        if email is not None and phone is not None:
            broken = self.breaks(trial, email, phone)
        if broken is None:
            self.model = trial
            return answer, []
        dropped = self.limits.priority[1]
        kept_email = None if dropped == "email" else email
        kept_phone = None if dropped == "phoneNumber" else phone
        answer = self.model.identify(kept_email, kept_phone)
        return answer, [{"field": dropped, "reason": "limit", "limit": broken}]

    @staticmethod
    def primaries(model: ReferenceModel) -> int:
        return len({row.linked_id or row.id for row in model.rows})

    def breaks(self, trial: ReferenceModel, email: str, phone: str) -> str | None:
        """The name of the limit `trial` (the model after the request) breaks."""
        merged = self.primaries(trial) < self.primaries(self.model)
        if not merged and len(trial.rows) == len(self.model.rows):
            return None
        cluster = next(
            r.linked_id or r.id
            for r in trial.rows
            if r.email == email or r.phone == phone
        )
        members = trial.cluster(cluster)
        values = {r.email for r in members} | {r.phone for r in members}
        if len(values - {None}) > self.limits.max_values:
            return "MAX_VALUES_PER_CUSTOMER"
        rows = self.model.rows
        phones = {r.phone for r in rows if r.email == email and r.phone}
        phones |= {p for e, p in self.model.merged if e == email}
        emails = {r.email for r in rows if r.phone == phone and r.email}
        emails |= {e for e, p in self.model.merged if p == phone}
        limit = self.limits.max_partners
        if (phone not in phones and len(phones) >= limit) or (
            email not in emails and len(emails) >= limit
        ):
            return "MAX_PARTNERS_PER_VALUE"
        return None


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
    max_examples=120,
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
    max_examples=60,
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
    max_examples=80,
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
    max_examples=30,
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
