"""The support commands the README and docs/ show run as written, from the repository,
with the `.venv/` that `make run` and `make test` install."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from app import create_app
from conftest import ROOT
from models import db

COMMAND = re.compile(r"^(\.venv/bin/flask --app app .*?)(?:\s+#.*)?$", re.M)
OPTIONAL = re.compile(r"\s+\[[^\]]*\]")
ORDERS = (
    ("george@hillvalley.edu", "919191"),
    ("biffsucks@hillvalley.edu", "717171"),
    ("george@hillvalley.edu", "717171"),
)


def readme_commands() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return [OPTIONAL.sub("", line) for line in COMMAND.findall(text)]


def test_the_readme_shows_support_commands() -> None:
    shown = " ".join(readme_commands())
    for command in (
        "customers detach",
        "customers erase",
        "customers holders",
        "audit",
    ):
        assert command in shown


@pytest.mark.parametrize("command", readme_commands())
def test_each_support_command_in_the_readme_runs_as_written(
    migrated_sqlite_file: Path, tmp_path: Path, command: str
) -> None:
    database = tmp_path / "contacts.db"
    database.write_bytes(migrated_sqlite_file.read_bytes())
    url = f"sqlite:///{database}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "API_KEYS": []})
    client = app.test_client()
    for email, phone in ORDERS:
        sent = client.post("/identify", json={"email": email, "phoneNumber": phone})
        assert sent.status_code == 200
    with app.app_context():
        db.engine.dispose()

    finished = subprocess.run(
        shlex.split(command),
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
