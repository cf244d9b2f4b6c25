"""What the service answers, checked through the Flask test client: problem
documents, identify's answers and the rows and events a request leaves."""

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from models import Contact, Event, SuppressedValue, db


def assert_problem(response: Any, status: int) -> None:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    document = response.get_json()
    assert document["status"] == status
    assert document["title"]
    assert document["detail"]
    assert "Traceback" not in response.get_data(as_text=True)


def post(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def view(
    primary: int, emails: list[str], phones: list[str], secondaries: list[int]
) -> dict[str, Any]:
    return {
        "primaryContactId": primary,
        "primaryContatctId": primary,
        "emails": emails,
        "phoneNumbers": phones,
        "secondaryContactIds": secondaries,
    }


def state(app: Flask) -> tuple[list[Any], list[Any], int, int]:
    """Every contact row and event, and the counts of blocked and suppressed
    values: what a request that changes nothing leaves as it was."""
    with app.app_context():
        session = db.session()
        contacts = session.execute(select(Contact).order_by(Contact.id)).all()
        rows = [(c.id, c.email, c.phone_number, c.linked_id) for (c,) in contacts]
        events = session.execute(
            select(Event.id, Event.email, Event.phone_number)
        ).all()
        blocked = session.scalar(text("SELECT count(*) FROM blocked_value"))
        suppressed = session.scalar(select(func.count()).select_from(SuppressedValue))
        return rows, [tuple(e) for e in events], blocked or 0, suppressed or 0


def sample(page: str, name: str, **labels: str) -> float:
    """The value of one sample of a metrics page; 0 when it is absent."""
    for family in text_string_to_metric_families(page):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0
