"""The bench's harness (bench/): the yardstick it serves, the references'
settings, how it pairs, shares out and counts its runs, and the import
series' lines sent to /identify."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def entries_of_every_series(commit: str) -> list[Any]:
    """One small entry of each series of the registry, as the history
    holds them, all measured at `commit`."""
    from delivery_bench import WebhookRun
    from graph_series import GraphRun
    from harness import Measured, Settings
    from imports import IdentifyRun, ImportRun, MemoryRun
    from registry import SERIES, entry
    from series import ClusterRun, Flood, LargeDetach

    settings = replace(Settings.from_env(), databases=["sqlite"], sizes=[10000])
    matrix_runs = [
        replace(run(target, repeat, rps), database="sqlite", workload=workload)
        for workload in ("lookup", "secondary", "primary", "merge")
        for repeat in range(2)
        for target, rps in (
            ("floor", 1000),
            ("service", 400),
            ("reference", 450),
            ("yardstick", 500),
        )
    ]
    records = {
        "matrix": Measured(
            matrix_runs,
            {
                "seeds": {"sqlite": [{"rows": 10000, "seconds": 0.5}]},
                "server": "gunicorn.conf.py",
                "yardstick": "gunicorn bench.reference:app",
            },
        ),
        "cluster": Measured(
            [
                ClusterRun("sqlite", rows, "lookup", 0, 100, 1.0, 100.0, ms, ms, 0, 0)
                for rows, ms in ((1, 2.0), (2000, 9.0))
            ]
        ),
        "flood": Measured([Flood("sqlite", 5000, 1.0, 1.5, 21, 20, 4980)]),
        "detach": Measured(
            [
                LargeDetach("sqlite", "service", 1000, value, 0, ms, after)
                for value, ms, after in (("email", 20.0, 1), ("phone", 150.0, 1000))
            ]
        ),
        "graph": Measured(
            [
                GraphRun("sqlite", target, 0, 100, 1.0, rps, 3.0, 6.0, 0, 0)
                for target, rps in (("service", 300.0), ("yardstick", 900.0))
            ]
        ),
        "webhooks": Measured(
            [
                WebhookRun(
                    "sqlite",
                    300,
                    5,
                    298.0,
                    5.0,
                    62.8,
                    300.0,
                    2.3,
                    9.4,
                    105.0,
                    327.0,
                    1500,
                    1444.0,
                    0,
                )
            ]
        ),
        "import": Measured(
            [
                ImportRun(
                    "sqlite",
                    0,
                    1000,
                    0.1,
                    10000.0,
                    100.0,
                    400,
                    0.01,
                    40000.0,
                    600,
                    60000.0,
                ),
                *(
                    IdentifyRun(
                        "sqlite",
                        repeat,
                        first,
                        100,
                        1.0,
                        rps,
                        5.0,
                        20.0,
                        0,
                        0,
                        first + 108,
                    )
                    for repeat, first, rps in ((0, 200, 400.0), (1, 308, 500.0))
                ),
                MemoryRun("sqlite", 5000000, 500.0, 10000.0, 310.5),
            ]
        ),
    }
    started = datetime(2026, 12, 4, 20, 43, tzinfo=UTC)
    return [
        entry(series, settings, records[series.name], commit, started, 1.0)
        for series in SERIES
    ]


def test_the_report_has_every_series_section_and_chart_with_the_headline_first(
    tmp_path: Path,
) -> None:
    from registry import SERIES, write

    out = tmp_path / "BENCHMARKS.md"
    write(out, entries_of_every_series("abc1234"))
    text = out.read_text()
    headline = text.index("| sqlite | x0.80, p99 2 ms | x0.80, p99 2 ms |")
    for series in SERIES:
        section = text.index(f"\n## {series.title}\n")
        assert headline < section
        assert "Measured at commit abc1234, 2026-12-04 20:43 UTC" in text[section:]
        if series.chart is not None:
            chart = tmp_path / "bench" / "charts" / f"{series.name}.png"
            assert chart.read_bytes().startswith(b"\x89PNG")
            assert f"](bench/charts/{series.name}.png)" in text[section:]
    assert "Not measured yet" not in text
    assert "lookup in a 2,000-row cluster p50 < 50 ms: 9.0 ms, met" in text


def test_a_series_measured_again_replaces_its_section_only(tmp_path: Path) -> None:
    from registry import render

    first = entries_of_every_series("aaa1111")
    [graph_again] = [
        entry for entry in entries_of_every_series("bbb2222") if entry.series == "graph"
    ]
    text = render([*first, graph_again], tmp_path / "BENCHMARKS.md")
    graph = text.index("\n## The graph of a customer\n")
    after_graph = text.index("\n## ", graph + 1)
    assert text.count("Measured at commit aaa1111") == len(first) - 1
    assert "Measured at commit bbb2222" in text[graph:after_graph]
    assert "Measured at commit aaa1111" not in text[graph:after_graph]


def test_a_series_never_measured_says_so_in_its_section(tmp_path: Path) -> None:
    from registry import render

    matrix_only = entries_of_every_series("abc1234")[:1]
    text = render(matrix_only, tmp_path / "BENCHMARKS.md")
    graph = text.index("\n## The graph of a customer\n")
    assert "Not measured yet: `BENCH_SERIES=graph make bench`" in text[graph:]
    assert not (tmp_path / "bench" / "charts" / "graph.png").exists()


def test_the_report_is_rendered_again_from_the_history_without_measuring(
    tmp_path: Path,
) -> None:
    from registry import save

    out = tmp_path / "BENCHMARKS.md"
    save(out.with_suffix(".json"), entries_of_every_series("abc1234"))
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--report-only"],
        env={**os.environ, "BENCH_OUT": str(out), "BENCH_SERIES": "nothing"},
        check=True,
        timeout=120,
    )
    assert "\n## Cluster size\n" in out.read_text()


def test_an_entry_without_its_command_or_machine_says_they_were_not_recorded(
    tmp_path: Path,
) -> None:
    from registry import render

    detach = next(e for e in entries_of_every_series("abc1234") if e.series == "detach")
    recovered = replace(detach, minutes=None, command=None, machine=None)
    text = render([recovered], tmp_path / "BENCHMARKS.md")
    section = text[text.index("\n## Detach from a 1,000-row customer\n") :]
    assert "abc1234, 2026-12-04 20:43 UTC; command not recorded\n" in section
    assert "- Machine: not recorded\n" in section


def test_a_customer_added_beside_the_seeded_ones_is_one_primary_with_its_rows_linked(
    database_url: str, connection: Any
) -> None:
    from harness import Database, Settings
    from sqlalchemy import text

    database = Database(
        "postgresql" if database_url.startswith("postgresql") else "sqlite",
        Settings.from_env(),
    )
    database.path = database_url.removeprefix("sqlite:///")
    database.url = database_url.replace("+psycopg", "")
    values = [("a@example.com", "1"), ("b@example.com", "1"), ("b@example.com", "2")]
    primary = database.add_customer(values)
    rows = connection.execute(
        text(
            "SELECT id, email, phone_number, link_precedence, linked_id"
            " FROM contact ORDER BY created_at"
        )
    ).all()
    assert [(row.email, row.phone_number) for row in rows] == values
    assert [(row.link_precedence, row.linked_id) for row in rows] == [
        ("primary", None),
        ("secondary", primary),
        ("secondary", primary),
    ]
    assert rows[0].id == primary


def test_the_import_section_shows_contacts_exported_identify_and_the_large_file(
    tmp_path: Path,
) -> None:
    from registry import render

    text = render(entries_of_every_series("abc1234"), tmp_path / "BENCHMARKS.md")
    section = text[text.index("\n## Import and export\n") :]
    row = "| sqlite | 0 | 1,000 | 0.1 | 10,000.0 | 100.0 | 400 | 600 | 0.01 | 40,000.0"
    assert f"{row} | 60,000.0 |" in section
    assert "export >= 50,000 contacts/s: 60,000.0, met" in section
    # The median of 400 and 500 lines/s; 10,000 / 450.
    assert (
        "| sqlite | 200 to 416 | 450 | 5.0 | 20.0 | 0 | 10,000.0 | x22.2 |" in section
    )
    assert "- sqlite: the import >= 20 x /identify: x22.2, met" in section
    assert "| sqlite | 5,000,000 | 500.0 | 10,000.0 | 310.5 |" in section
    assert "- sqlite, 5,000,000 lines: peak RSS < 300 MB: 310.5 MB, NOT met" in section


def test_an_import_entry_from_before_contacts_and_identify_were_measured_still_renders(
    tmp_path: Path,
) -> None:
    from registry import render

    [imported] = [e for e in entries_of_every_series("abc1234") if e.series == "import"]
    older = {
        "database": "sqlite",
        "seeded": 0,
        "lines": 1000000,
        "seconds": 92.31,
        "lines_per_s": 10833,
        "peak_rss_mb": 155.1,
        "exported": 279673,
        "export_seconds": 4.38,
        "customers_per_s": 63925,
    }
    text = render([replace(imported, records=[older])], tmp_path / "BENCHMARKS.md")
    section = text[text.index("\n## Import and export\n") :]
    assert "| 155.1 | 279,673 | not counted | 4.38 | 63,925 | not counted |" in section
    verdict = "- sqlite, 1,000,000 lines into 0 contacts: >= 25,000 lines/s: 10,833"
    assert f"{verdict}, NOT met; peak RSS < 300 MB: 155.1 MB, met\n" in section
    assert "/identify lines/s" not in section
    assert "BENCH_IMPORT_MEMORY_LINES" not in section


def test_the_identify_bodies_are_the_files_values_in_the_order_the_import_applies_them(
    tmp_path: Path,
) -> None:
    from orders import write_bodies

    from import_lines import read_sorted

    orders = tmp_path / "orders.csv"
    orders.write_text(
        "orderId,email,phoneNumber,createdAt,total\n"
        "1,d@shop.example.com,+44 7000000004,2023-05-01T10:00:00Z,5.00\n"
        "2,b@shop.example.com,+44 7000000002,2021-02-01T10:00:00Z,5.00\n"
        "3,c@shop.example.com,+44 7000000003,2023-05-01T10:00:00Z,5.00\n"
        "4,a@shop.example.com,+44 7000000001,2022-01-01T10:00:00Z,5.00\n"
    )
    bodies = tmp_path / "bodies.ndjson"
    write_bodies(orders, bodies)
    sent = [json.loads(line) for line in bodies.read_text().splitlines()]
    with ExitStack() as stack:
        applied = [
            line.email for line in read_sorted(orders, "csv", io.StringIO(), stack)
        ]
    assert (
        [body["email"] for body in sent]
        == applied
        == [
            "b@shop.example.com",
            "a@shop.example.com",
            "d@shop.example.com",
            "c@shop.example.com",
        ]
    )
    assert sent[0] == {"email": "b@shop.example.com", "phoneNumber": "+44 7000000002"}


class Receiver(BaseHTTPRequestHandler):
    """wrk's server: keeps the body of every POST; answers 200 to it and to
    a GET, as the service's /health."""

    protocol_version = "HTTP/1.1"
    received: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(body.decode())
        self.do_GET()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[str]]]:
    received: list[str] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


def bodies_file(tmp_path: Path, count: int) -> list[str]:
    lines = [
        json.dumps({"email": f"n{n}@example.com", "phoneNumber": None})
        for n in range(count)
    ]
    (tmp_path / "bodies.ndjson").write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.parametrize("threads", [1, 2])
def test_the_wrk_script_sends_each_line_once_from_the_first_asked_to_the_end(
    tmp_path: Path, receiver: tuple[str, list[str]], threads: int
) -> None:
    from harness import Settings, run_wrk

    url, received = receiver
    lines = bodies_file(tmp_path, 40)
    settings = replace(Settings.from_env(), duration=1, threads=threads)
    result = run_wrk(
        settings, "lines.lua", url, [tmp_path / "bodies.ndjson", 5, threads]
    )
    assert sorted(received) == sorted(lines[5:])
    assert (result["next_line"], result["non_2xx"]) == (40, 0)


def test_a_wrk_run_carries_on_where_the_last_stopped_sending_no_line_twice(
    tmp_path: Path, receiver: tuple[str, list[str]]
) -> None:
    from harness import Settings, run_wrk

    url, received = receiver
    lines = bodies_file(tmp_path, 200_000)
    settings = replace(Settings.from_env(), duration=1)
    first = run_wrk(settings, "lines.lua", url, [tmp_path / "bodies.ndjson", 0, 1])
    second = run_wrk(
        settings, "lines.lua", url, [tmp_path / "bodies.ndjson", first["next_line"], 1]
    )
    assert 0 < first["next_line"] < second["next_line"] < len(lines)
    # By content, not by arrival: the receiver may record the first run's
    # last request after wrk has returned.
    carried_on = set(lines[first["next_line"] : second["next_line"]])
    assert set(received) <= set(lines[: first["next_line"]]) | carried_on
    assert set(received) & carried_on
    assert len(set(received)) == len(received) >= first["requests"] + second["requests"]
