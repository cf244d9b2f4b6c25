"""The bench's harness (bench/): the yardstick it serves, the references'
settings, and how it pairs, shares out and counts its runs."""

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/run.py runs as a script, its modules importing each other by name."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    for name in ("BENCH_WORKERS", "BENCH_CONNECTIONS", "BENCH_INSTANCES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_file(tmp_path: Path, migrated_sqlite_file: Path) -> Path:
    path = tmp_path / "bench.db"
    shutil.copy(migrated_sqlite_file, path)
    return path


def test_the_yardstick_is_served_by_gunicorns_sync_worker_without_the_services_config(
    sqlite_file: Path,
) -> None:
    from harness import Settings
    from references import yardstick

    settings = Settings.from_env()
    server = yardstick(
        settings, free_port(), {"DATABASE_URL": f"sqlite:///{sqlite_file}"}
    )
    process = subprocess.Popen(
        server.command,
        cwd=server.cwd,
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    body = {"email": "a@example.com", "phoneNumber": "123456"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.post(f"{server.url}/insert", json=body, timeout=30)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the yardstick never answered"
                time.sleep(0.2)
        selected = requests.post(f"{server.url}/select", json=body, timeout=30)
    finally:
        process.terminate()
        _, log = process.communicate(timeout=30)
    assert answer.status_code == 200
    assert selected.json() == answer.json()
    # The sync worker closes every connection; the service's keeps it open.
    assert answer.headers["Connection"] == "close"
    assert "Using worker: sync" in log
    assert log.count("Booting worker") == settings.workers == 2
    # gunicorn.conf.py would have made gunicorn's own lines JSON.
    assert not any(line.startswith("{") for line in log.splitlines())


@pytest.mark.parametrize(("setting", "pragma"), [(None, 2), ("NORMAL", 1)])
def test_the_reference_commits_with_the_services_sqlite_synchronous(
    sqlite_file: Path, setting: str | None, pragma: int
) -> None:
    env = {"DATABASE_URL": f"sqlite:///{sqlite_file}", "PATH": "/usr/bin:/bin"}
    if setting is not None:
        env["SQLITE_SYNCHRONOUS"] = setting
    read = (
        "from sqlalchemy import text; from bench.reference import app; from models"
        " import db\nwith app.app_context():"
        " print(db.session.execute(text('PRAGMA synchronous')).scalar())"
    )
    output = subprocess.run(
        [sys.executable, "-c", read],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert output.split() == [str(pragma)]


def run(target: str, repeat: int, rps: float, connections: int = 8) -> Any:
    from matrix import Run

    return Run(
        "postgresql",
        10000,
        "primary",
        repeat,
        target,
        connections,
        requests=int(rps),
        seconds=1.0,
        rps=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        non_2xx=0,
        socket_errors=0,
        stopped_threads=0,
        merge_fallbacks=0,
    )


def test_ratios_are_medians_of_the_runs_of_each_repetition_at_each_count() -> None:
    from matrix import summarise

    runs = []
    for repeat, (service, yardstick, together) in enumerate(
        [(100, 100, 100), (300, 100, 300), (200, 400, 800)]
    ):
        runs += [
            run("floor", repeat, 1000),
            run("service", repeat, service),
            run("instances", repeat, together),
            run("yardstick", repeat, yardstick),
            run("floor", repeat, 1000, connections=32),
            run("service", repeat, 50, connections=32),
            run("yardstick", repeat, 100, connections=32),
        ]
    eight, thirty_two = summarise(runs)
    assert (eight["connections"], thirty_two["connections"]) == (8, 32)
    # Per repetition 1, 3 and 0.5: the median is 1, not 200 / 100.
    assert eight["yardstick_share"] == 1.0
    assert eight["instances_share"] == 1.0
    assert eight["rps"] == 200
    assert thirty_two["yardstick_share"] == 0.5
    assert thirty_two["instances_share"] is None


def test_a_span_is_shared_out_without_overlap_or_gap() -> None:
    from matrix import split

    parts = split((10, 21), 4)
    assert parts[0][0] == 10 and parts[-1][1] == 21
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert sorted(high - low for low, high in parts) == [2, 3, 3, 3]


def test_connections_that_the_instances_cannot_share_equally_are_refused() -> None:
    from harness import Settings
    from instances import check

    settings = replace(
        Settings.from_env(), databases=["postgresql"], connection_counts=[8, 5]
    )
    with pytest.raises(SystemExit, match="BENCH_CONNECTIONS 5"):
        check(settings)
    check(replace(settings, databases=["sqlite"]))
    check(replace(settings, instances=1))


def test_a_run_is_counted_until_the_rows_it_left_queued_are_written(
    sqlite_file: Path,
) -> None:
    from harness import Database, Server, Settings
    from matrix import Matrix

    settings = Settings.from_env()
    database = Database("sqlite", settings)
    database.path = str(sqlite_file)
    floor = Server("bench.floor:app", free_port(), {}, workers=1)
    matrix = Matrix(settings, database, 10, floor)

    started = threading.Event()

    def late_writes() -> None:
        """What a server does after wrk stopped: commit after commit, each
        far sooner after the last than settle looks again."""
        with sqlite3.connect(sqlite_file) as connection:
            for n in range(20):
                connection.execute(
                    "INSERT INTO contact (email, link_precedence, created_at,"
                    " updated_at) VALUES (?, 'primary', '2000-01-01', '2000-01-01')",
                    (f"late{n}@example.com",),
                )
                connection.commit()
                started.set()
                time.sleep(0.01)

    writer = threading.Thread(target=late_writes)
    writer.start()
    started.wait(10)
    settled = matrix.settle()
    writer.join()
    assert settled == database.counts() == (20, 20)
