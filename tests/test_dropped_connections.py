"""A pooled connection that the server has dropped (a restart, an idle
timeout, an administrator) is replaced without the client seeing an error."""

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from engines import only_on
from models import db


@only_on("postgresql")
def test_a_request_on_a_dropped_connection_is_answered(
    app: Flask, client: FlaskClient
) -> None:
    body = {"email": "doc@fluxkart.com", "phoneNumber": "123456"}
    assert client.post("/identify", json=body).status_code == 200
    with app.app_context():
        assert db.engine.pool.checkedin() == 1
        # The pool's only connection: the one the next request will use.
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        db.session.remove()
        url = db.engine.url

    killer = create_engine(url)
    with killer.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    killer.dispose()

    response = client.post("/identify", json=body)
    assert response.status_code == 200
    assert response.get_json()["contact"]["primaryContactId"] == 1
