"""Random request sequences: the service answers exactly as a small reference
model of the contract's rules, the table keeps every invariant, and replaying
the ledger rebuilds the table's customers."""

import copy
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import empty_database
from guard import Guard
from invariants import (
    assert_invariants,
    assert_ledger_explains,
    ledger_events,
    live_rows,
)
from models import db
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
    Rows are created in id order, so the oldest row is the lowest id."""

    rows: list[ModelRow] = field(default_factory=list)

    def identify(self, email: str | None, phone: str | None) -> dict[str, Any]:
        matched = [
            row
            for row in self.rows
            if (email is not None and row.email == email)
            or (phone is not None and row.phone == phone)
        ]
        primaries = sorted({row.linked_id or row.id for row in matched})
        if not primaries:
            self.rows.append(ModelRow(len(self.rows) + 1, email, phone))
            return self.view(len(self.rows))
        oldest, *newer = primaries
        for row in self.rows:
            if row.id in newer or row.linked_id in newer:
                row.linked_id = oldest
        cluster = self.cluster(oldest)
        if (email is not None and email not in [r.email for r in cluster]) or (
            phone is not None and phone not in [r.phone for r in cluster]
        ):
            self.rows.append(ModelRow(len(self.rows) + 1, email, phone, oldest))
        return self.view(oldest)

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
    if sent without its lower-priority value."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.model = ReferenceModel()
        self.merged: set[tuple[str, str]] = set()

    def identify(
        self, email: str | None, phone: str | None
    ) -> tuple[dict[str, object], list[dict[str, str]]]:
        trial = copy.deepcopy(self.model)
        answer = trial.identify(email, phone)
        if email is None or phone is None or not self.breaks(trial, email, phone):
            if self.primaries(trial) < self.primaries(self.model):
                self.merged.add((email, phone))  # type: ignore[arg-type]
            self.model = trial
            return answer, []
        dropped = self.limits.priority[1]
        kept_email = None if dropped == "email" else email
        kept_phone = None if dropped == "phoneNumber" else phone
        answer = self.model.identify(kept_email, kept_phone)
        return answer, [{"field": dropped, "reason": "limit"}]

    @staticmethod
    def primaries(model: ReferenceModel) -> int:
        return len({row.linked_id or row.id for row in model.rows})

    def breaks(self, trial: ReferenceModel, email: str, phone: str) -> bool:
        merged = self.primaries(trial) < self.primaries(self.model)
        if not merged and len(trial.rows) == len(self.model.rows):
            return False
        cluster = next(
            r.linked_id or r.id
            for r in trial.rows
            if r.email == email or r.phone == phone
        )
        members = trial.cluster(cluster)
        values = {r.email for r in members} | {r.phone for r in members}
        if len(values - {None}) > self.limits.max_values:
            return True
        rows = self.model.rows
        phones = {r.phone for r in rows if r.email == email and r.phone}
        phones |= {p for e, p in self.merged if e == email}
        emails = {r.email for r in rows if r.phone == phone and r.email}
        emails |= {e for e, p in self.merged if p == phone}
        limit = self.limits.max_partners
        return (phone not in phones and len(phones) >= limit) or (
            email not in emails and len(emails) >= limit
        )


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
