"""What a new deployment meets first: an unmigrated database, a platform that
sets only PORT, several instances on one host."""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from app import create_app
from conftest import ROOT, migrate, postgres_schema, wait_until_healthy
from live import free_port, live_service
from models import db
from settings import bind


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_url")
    with postgres_schema(f"unmigrated_{os.getpid()}") as url:
        yield url


def test_identify_on_an_unmigrated_database_is_503_naming_the_upgrade(
    unmigrated_url: str,
) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": unmigrated_url})
    client = app.test_client()

    response = client.post("/identify", json={"email": "doc@fluxkart.com"})
    migrate(unmigrated_url)
    after = client.post("/identify", json={"email": "doc@fluxkart.com"})
    with app.app_context():
        db.engine.dispose()

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "flask --app app db upgrade" in response.get_json()["detail"]
    assert after.status_code == 200


@pytest.mark.parametrize(
    ("environment", "address"),
    [
        ({}, "127.0.0.1:8000"),
        ({"PORT": "8015"}, "0.0.0.0:8015"),
        ({"HOST": "10.1.2.3"}, "10.1.2.3:8000"),
        ({"HOST": "127.0.0.1", "PORT": "8015"}, "127.0.0.1:8015"),
    ],
)
def test_gunicorn_binds_every_interface_only_when_the_platform_sets_the_port(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], address: str
) -> None:
    for name in ("HOST", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert bind() == address


def test_gunicorn_given_only_a_port_is_reachable_beyond_loopback(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'contacts.db'}"
    migrate(database_url)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name != "HOST"}
    env |= {
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "app:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_gunicorn_instances_open_no_shared_control_socket(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": ""}
    with live_service(tmp_path, env=env) as url:
        assert requests.get(f"{url}/health", timeout=10).status_code == 200

    assert list(home.iterdir()) == []


def test_make_run_serves_this_machine_only_even_when_port_is_set(
    tmp_path: Path,
) -> None:
    """`make run` is for a developer's machine: PORT picks the port, and
    only the platform's own start command (Procfile) binds every interface."""
    port = free_port()
    unset = {"HOST", "PROMETHEUS_MULTIPROC_DIR"}
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env |= {
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'contacts.db'}",
        "WEB_CONCURRENCY": "1",
    }
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_render_keeps_the_database_off_the_internet() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())

    assert [database["ipAllowList"] for database in blueprint["databases"]] == [[]]
