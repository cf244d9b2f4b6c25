"""The support commands the README shows run as written, with the `.venv/`
that `make run` and `make test` install, in a directory holding the files
they name (the import's order files; what the export writes lands there)."""

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
FILES = {
    "orders.csv": "email,phoneNumber,createdAt\n"
    "lorraine@hillvalley.edu,123456,2024-01-01T10:00:00Z\n",
    "orders.txt": '{"email": "mcfly@hillvalley.edu", "phoneNumber": "123456"}\n',
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
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

    for name, content in FILES.items():
        (tmp_path / name).write_text(content)

    finished = subprocess.run(
        command.replace(".venv/bin/flask", shlex.quote(str(ROOT / ".venv/bin/flask"))),
        shell=True,
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
