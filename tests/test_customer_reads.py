"""The read endpoints: GET /customers/{contact_id}, its history, /events."""

import pytest
from flask.testing import FlaskClient

from validation import MAX_ID

pytestmark = pytest.mark.quick


# One past the largest id of a PostgreSQL INTEGER column, which refuses it as
# a parameter, and one past 64 bits, which SQLite cannot even bind.
@pytest.mark.parametrize("contact_id", [MAX_ID + 1, 2**63])
@pytest.mark.parametrize("path", ["/customers/{}", "/customers/{}/history"])
def test_an_id_larger_than_any_row_can_have_is_404(
    client: FlaskClient, path: str, contact_id: int
) -> None:
    response = client.get(path.format(contact_id))

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    detail = response.get_json()["detail"]
    assert detail == f"No live contact has the id {contact_id}."


@pytest.mark.parametrize("path", ["/events", "/customers/1/history"])
def test_an_after_larger_than_any_event_id_can_be_is_400(
    client: FlaskClient, path: str
) -> None:
    client.post("/identify", json={"email": "doc@fluxkart.com"})

    response = client.get(path, query_string={"after": MAX_ID + 1})

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"] == f"after must be from 0 to {MAX_ID}."
    assert client.get(path, query_string={"after": MAX_ID}).status_code == 200
