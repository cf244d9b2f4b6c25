"""API_KEYS: bearer keys on every endpoint but health, the API description and
the docs page."""

import shutil
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from auth import key_is_valid
from conftest import migrate
from live import live_service
from settings import parse_api_keys

BODY = {"email": "doc@fluxkart.com", "phoneNumber": "123456"}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite file at the latest migration, to copy: migrating once
    per test would cost a process each."""
    path = tmp_path_factory.mktemp("migrated") / "contacts.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def keyed_app(migrated: Path, tmp_path: Path) -> Flask:
    database = shutil.copy(migrated, tmp_path / "contacts.db")
    return create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
            "API_KEYS": ["old-key", "new-key"],
        }
    )


@pytest.fixture
def keyed(keyed_app: Flask) -> FlaskClient:
    return keyed_app.test_client()


def test_api_keys_setting_is_split_on_commas() -> None:
    assert parse_api_keys(" old-key, new-key ,,") == ["old-key", "new-key"]
    assert parse_api_keys(None) == []


def test_key_is_valid_only_for_a_configured_key() -> None:
    assert key_is_valid("new-key", ["old-key", "new-key"])
    assert not key_is_valid("new-ke", ["old-key", "new-key"])
    assert not key_is_valid("", ["old-key"])


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", "Bearer ", "Basic b2xkLWtleTo=", "old-key"],
)
def test_missing_or_wrong_key_is_a_401_problem_asking_for_bearer(
    keyed: FlaskClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = keyed.post("/identify", json=BODY, headers=headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["detail"]


@pytest.mark.parametrize("key", ["old-key", "new-key"])
def test_every_configured_key_is_accepted_so_keys_can_be_rotated(
    keyed: FlaskClient, key: str
) -> None:
    response = keyed.post(
        "/identify", json=BODY, headers={"Authorization": f"Bearer {key}"}
    )

    assert response.status_code == 200


def test_metrics_need_a_key_when_keys_are_set(keyed: FlaskClient) -> None:
    assert keyed.get("/metrics").status_code == 401
    authorized = keyed.get("/metrics", headers={"Authorization": "Bearer old-key"})
    assert authorized.status_code == 200


@pytest.mark.parametrize(
    "path", ["/health", "/openapi.json", "/docs/", "/docs/swagger-ui-bundle.js"]
)
def test_health_api_description_and_docs_need_no_key(
    keyed: FlaskClient, path: str
) -> None:
    assert keyed.get(path).status_code == 200


def test_unknown_paths_and_methods_answer_as_without_keys(keyed: FlaskClient) -> None:
    assert keyed.get("/nowhere").status_code == 404
    assert keyed.get("/identify").status_code == 405


def test_without_api_keys_every_endpoint_is_open(client: FlaskClient) -> None:
    assert client.post("/identify", json=BODY).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_rejected_key_is_never_logged(
    keyed: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    keyed.post("/identify", json=BODY, headers={"Authorization": "Bearer sk-live-x"})
    keyed.post("/identify", json=BODY, headers={"Authorization": "Bearer old-key"})

    output = capsys.readouterr().out
    assert "sk-live-x" not in output
    assert "old-key" not in output


@pytest.mark.parametrize(
    ("api_keys", "warnings"), [({}, 1), ({"API_KEYS": "a-key"}, 0)]
)
def test_gunicorn_warns_once_at_start_only_when_the_service_is_open(
    tmp_path: Path, api_keys: dict[str, str], warnings: int
) -> None:
    error_log = tmp_path / "gunicorn.log"
    env = {**api_keys, "GUNICORN_CMD_ARGS": f"--error-logfile {error_log}"}
    with live_service(tmp_path, workers=2, env=env):
        pass

    assert error_log.read_text().count("API_KEYS is not set") == warnings
