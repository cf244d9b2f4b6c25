"""Random request sequences: the service answers exactly as a small reference
model of the contract's rules, the table keeps every invariant, and replaying
the ledger rebuilds the table's customers."""

from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import empty_database
from invariants import (
    assert_invariants,
    assert_ledger_explains,
    ledger_events,
    live_rows,
)
from models import db

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
