"""The commands the README and the docs/ pages show run as written, against a
real service, and print what the page shows.

A page's ```sh blocks run in order, each through bash, against one gunicorn
serving a new SQLite database (what `make run` serves): `localhost:8000` is
that service, `.venv/bin/` the virtualenv running the tests, and the working
directory an empty one. A fenced block right after a ```sh block is what it
prints; `…` there stands for anything (times, request ids). An HTML comment
on the line before a ```sh block steers it:

    <!-- not run: why -->            not run here (it installs, serves, or is
                                     run by a test of its own)
    <!-- fresh server: NAME=value -->  this block and the next ones run on a
                                     new database, served with these settings
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, make_url, text

from conftest import POSTGRES_URL, ROOT, gunicorn, postgres_unreachable
from live import free_port

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\w*)\s*$")
STEER = re.compile(r"^\s*<!-- (not run|fresh server)(?::\s*(.*?))?\s*-->$")
VENV_BIN = Path(sys.executable).parent


@dataclass
class Block:
    """A ```sh block of a page: what it runs, where, and what it prints."""

    page: Path
    line: int
    script: str
    answer: str | None = None
    run: bool = True
    fresh: dict[str, str] | None = None


def command_blocks(page: Path) -> list[Block]:
    """The ```sh blocks of `page`, in order, each with the block that follows
    it as its answer and the comment before it as its steering."""
    lines = page.read_text().split("\n")
    blocks: list[Block] = []
    fences: list[tuple[int, int, str]] = []
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if opened is None:
            index += 1
            continue
        end = next(
            (n for n in range(index + 1, len(lines)) if lines[n].strip() == "```"),
            None,
        )
        assert end is not None, f"{page.name}:{index + 1}: a block is never closed"
        fences.append((index, end, opened.group(1)))
        index = end + 1
    for number, (start, end, language) in enumerate(fences):
        if language != "sh":
            continue
        block = Block(page, start + 1, dedent("\n".join(lines[start + 1 : end])))
        steer = STEER.match(lines[start - 1]) if start else None
        if steer and steer.group(1) == "not run":
            block.run = False
        elif steer:
            block.fresh = dict(
                setting.split("=", 1) for setting in shlex.split(steer.group(2) or "")
            )
        following = fences[number + 1] if number + 1 < len(fences) else None
        if following and following[0] == end + 1:
            block.answer = dedent("\n".join(lines[following[0] + 1 : following[1]]))
        blocks.append(block)
    return blocks


def matches(shown: str, printed: str) -> bool:
    """Whether `printed` is what `shown` says, `…` standing for anything."""
    pattern = ".*?".join(re.escape(part) for part in shown.strip().split("…"))
    return re.fullmatch(pattern, printed.strip(), re.S) is not None


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if any(block.run for block in command_blocks(page))],
    ids=lambda page: page.name,
)
def test_every_command_a_page_shows_prints_what_the_page_shows(
    page: Path, tmp_path: Path, migrated_sqlite_file: Path
) -> None:
    blocks = [block for block in command_blocks(page) if block.run]
    work = tmp_path / "work"
    work.mkdir()
    with ExitStack() as stack:
        settings: dict[str, str] = {}
        base_url = ""
        for number, block in enumerate(blocks):
            if number == 0 or block.fresh is not None:
                stack.close()
                settings = block.fresh or {}
                directory = tmp_path / f"server{number}"
                directory.mkdir()
                shutil.copy(migrated_sqlite_file, directory / "contacts.db")
                database_url = f"sqlite:///{directory / 'contacts.db'}"
                env = {
                    "PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"),
                    **settings,
                }
                base_url = stack.enter_context(
                    gunicorn(database_url, free_port(), 1, env)
                )
            script = block.script.replace("localhost:8000", base_url).replace(
                ".venv/bin/", f"{VENV_BIN}/"
            )
            finished = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=work,
                env={
                    **os.environ,
                    **settings,
                    "DATABASE_URL": database_url,
                    "PYTHONPATH": str(ROOT),
                },
                capture_output=True,
                text=True,
                timeout=120,
            )
            where = f"{page.name}:{block.line}"
            printed = finished.stdout.replace("\r\n", "\n")
            assert finished.returncode == 0, f"{where} failed:\n{finished.stderr}"
            if block.answer is not None:
                assert matches(block.answer, printed), (
                    f"{where} printed:\n{printed}\nthe page shows:\n{block.answer}"
                )


def test_the_pages_show_the_tour_and_the_support_commands() -> None:
    shown = "\n".join(
        block.script for page in PAGES for block in command_blocks(page) if block.run
    )
    for command in (
        "localhost:8000/identify",
        "localhost:8000/customers/lookup",
        "/history",
        "/detach",
        "customers detach",
        "customers erase",
        "customers holders",
        "contacts audit",
    ):
        assert command in shown


def test_every_block_that_runs_a_command_says_what_it_prints_or_why_not() -> None:
    for page in PAGES:
        for block in command_blocks(page):
            prints = "curl " in block.script or "flask " in block.script
            if block.run and prints:
                assert block.answer is not None, (
                    f"{page.name}:{block.line} runs a command but shows no answer"
                )


def test_run_postgresql_creates_migrates_and_serves_a_database() -> None:
    reason = postgres_unreachable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the PostgreSQL tests must run)")
    if reason:
        pytest.skip(reason)
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(make run-postgresql)\b", readme, re.M)
    assert command, "the README shows no `make run-postgresql`"
    database = make_url(POSTGRES_URL).set(drivername="postgresql")
    server = database.render_as_string(hide_password=False).rsplit("/", 1)[0]
    name = f"readme_{uuid.uuid4().hex[:12]}"
    port = free_port()
    process = subprocess.Popen(
        [
            *shlex.split(command.group(1)),
            f"POSTGRES={server}",
            f"POSTGRES_DB={name}",
        ],
        cwd=ROOT,
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        answer = identify_when_served(f"http://127.0.0.1:{port}", process)
        assert answer["contact"]["emails"] == ["lorraine@hillvalley.edu"]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        engine = create_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres")
        with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def identify_when_served(
    base_url: str, process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Identify one order as soon as the service at `base_url` is healthy."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"make run-postgresql exited: {error}")
        try:
            if requests.get(f"{base_url}/health", timeout=5).status_code == 200:
                answer: dict[str, Any] = requests.post(
                    f"{base_url}/identify",
                    json={"email": "lorraine@hillvalley.edu"},
                    timeout=5,
                ).json()
                return answer
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("make run-postgresql never served")
