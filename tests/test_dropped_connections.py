"""A pooled connection that the server has dropped (a restart, an idle
timeout, an administrator) is replaced without the client seeing an error."""

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from models import db


def test_a_request_on_a_dropped_connection_is_answered(
    app: Flask, client: FlaskClient
) -> None:
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("only a server can drop a pooled connection")
        url = db.engine.url
    body = {"email": "doc@fluxkart.com", "phoneNumber": "123456"}
    assert client.post("/identify", json=body).status_code == 200

    killer = create_engine(url)
    with killer.begin() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    killer.dispose()
    assert killed >= 1

    response = client.post("/identify", json=body)
    assert response.status_code == 200
    assert response.get_json()["contact"]["primaryContactId"] == 1
