"""Live services for the operations tests: real gunicorn worker processes on
a migrated database, on a free port, and the clients that drive them."""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from conftest import ROOT, empty_tables, gunicorn, migrate


def free_port() -> int:
    """A port nothing listens on right now, chosen by the system."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@cache
def migrated_sqlite_template() -> Path:
    """A SQLite file built by the migrations once per test process (removed
    when it exits): each live service starts from a copy, as an operator's
    `flask db upgrade` would leave it."""
    directory = Path(tempfile.mkdtemp(prefix="identify-tests-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "contacts.db"
    migrate(f"sqlite:///{path}")
    return path


def fresh_sqlite_file(path: Path) -> str:
    """A migrated, empty SQLite file at `path`; its URL."""
    shutil.copy(migrated_sqlite_template(), path)
    return f"sqlite:///{path}"


@contextmanager
def live_service(
    directory: Path,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.PIPE,
) -> Iterator[str]:
    """Serve a fresh database in `directory`; yield the base URL."""
    url = fresh_sqlite_file(directory / "contacts.db")
    settings = {"PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"), **(env or {})}
    with gunicorn(url, free_port(), workers, settings, stdout, stderr) as base_url:
        yield base_url


def send_raw(url: str, request: bytes) -> bytes:
    """Send `request` to the server at `url` as it is; return all it answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(request)
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def start_gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run gunicorn as production does until it exits on its own (or 30 s)."""
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "app:app"],
        cwd=ROOT,
        env={**os.environ, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextmanager
def instances(
    request: pytest.FixtureRequest, tmp_path: Path, env: dict[str, str]
) -> Iterator[tuple[str, list[str]]]:
    """One gunicorn on a SQLite file, or two on PostgreSQL, with `env`, on
    empty tables."""
    if request.param == "sqlite":
        url, count = fresh_sqlite_file(tmp_path / "contacts.db"), 1
    else:
        url, count = request.getfixturevalue("postgres_url"), 2
        engine = create_engine(url)
        with engine.begin() as connection:
            empty_tables(connection)
        engine.dispose()
    with ExitStack() as stack:
        base_urls = [
            stack.enter_context(gunicorn(url, free_port(), env=env))
            for _ in range(count)
        ]
        yield url, base_urls


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def retries(base_urls: list[str]) -> int:
    """Transactions retried after a lost race, summed over every instance."""
    total = 0.0
    for base_url in base_urls:
        text = requests.get(f"{base_url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "identify_race_retries":
                total += sum(
                    s.value for s in family.samples if s.name.endswith("_total")
                )
    return int(total)


class FeedReader:
    """Pages through GET /events with `after` while the test runs, as a shop
    polls it; keeps every event id it was shown."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.seen: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with requests.Session() as http:
            while True:
                finished = self.done.is_set()
                self.read_to_the_end(http)
                if finished:
                    return

    def read_to_the_end(self, http: requests.Session) -> None:
        while True:
            after = self.seen[-1] if self.seen else 0
            page = http.get(
                f"{self.base_url}/events", params={"after": after}, timeout=60
            ).json()
            self.seen += [event["id"] for event in page["events"]]
            if page["next"] is None:
                return

    def __enter__(self) -> "FeedReader":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=120)
