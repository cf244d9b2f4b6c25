"""The import series: `flask --app app contacts import` of a shop's order
history (bench/orders.py) into an empty database and into one seeded with
BENCH_IMPORT_SEEDED contacts, then `contacts export` of the result, on each
engine: lines/s, peak memory of the import process, customers/s and
contacts/s. Beside them, on each engine, the same lines sent through POST
/identify of the service as shipped, which the import must outrun twentyfold,
and, on SQLite, the import of a file of BENCH_IMPORT_MEMORY_LINES lines for
its peak memory."""

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    ROOT,
    Database,
    Settings,
    app_server,
    env,
    log,
    run_wrk,
    wrk_cells,
)
from orders import write_bodies, write_orders

IMPORT_DATABASES = ("sqlite", "postgresql")
EMPTY_TARGETS = {"sqlite": 25_000, "postgresql": 10_000}
IDENTIFY_TARGET = 20
MEMORY_TARGET_MB = 300
EXPORT_TARGET = 50_000


@dataclass
class ImportRun:
    """One import and the export after it. Entries measured before the
    export counted contacts lack `contacts` and `contacts_per_s`."""

    database: str
    seeded: int
    lines: int
    seconds: float
    lines_per_s: float
    peak_rss_mb: float
    exported: int
    export_seconds: float
    customers_per_s: float
    contacts: int | None = None
    contacts_per_s: float | None = None
    measure: str = "import"


@dataclass
class IdentifyRun:
    """One wrk run of the order lines through POST /identify (bench/lines.lua):
    the lines from first_line to next_line."""

    database: str
    repeat: int
    first_line: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    next_line: int
    measure: str = "identify"


@dataclass
class MemoryRun:
    """The import of the large file into an empty database, for its peak memory."""

    database: str
    lines: int
    seconds: float
    lines_per_s: float
    peak_rss_mb: float
    measure: str = "memory"


RECORDS = {"import": ImportRun, "identify": IdentifyRun, "memory": MemoryRun}


def import_record(**fields: Any) -> ImportRun | IdentifyRun | MemoryRun:
    """A record of the history as the dataclass its `measure` names; the
    entries from before the series measured anything but imports have none."""
    return RECORDS[fields.get("measure", "import")](**fields)


def import_series(settings: Settings) -> list[ImportRun | IdentifyRun | MemoryRun]:
    """For each database of BENCH_DATABASES that is an engine, and each of 0
    and BENCH_IMPORT_SEEDED contacts seeded: import BENCH_IMPORT_LINES order
    lines, then export every customer; then send the same lines through
    /identify. Last, on SQLite, import BENCH_IMPORT_MEMORY_LINES lines."""
    lines = int(env("BENCH_IMPORT_LINES", "1000000"))
    seeded_sizes = (0, int(env("BENCH_IMPORT_SEEDED", "1000000")))
    path = orders_file(lines)
    bodies = path.with_name(f"identify-{lines}.ndjson")
    if not bodies.exists() or bodies.stat().st_mtime < path.stat().st_mtime:
        log(f"sorting {lines:,} order lines into /identify bodies")
        write_bodies(path, bodies)
    runs: list[ImportRun | IdentifyRun | MemoryRun] = []
    for kind in IMPORT_DATABASES:
        if kind not in settings.databases:
            continue
        database = Database(kind, settings)
        for seeded in seeded_sizes:
            log(f"{kind}: import {lines:,} lines into {seeded:,} contacts")
            database.seed(seeded)
            seconds, peak = _timed(database, ["import", str(path)])
            out = BENCH / ".data" / "export.ndjson"
            export_seconds, _ = _timed(database, ["export", str(out)])
            customers = contacts = 0
            with out.open() as exported:
                for customer in exported:
                    customers += 1
                    contacts += 1 + len(json.loads(customer)["secondaryContactIds"])
            run = ImportRun(
                kind,
                seeded,
                lines,
                round(seconds, 2),
                round(lines / seconds),
                round(peak, 1),
                customers,
                round(export_seconds, 2),
                round(customers / export_seconds),
                contacts,
                round(contacts / export_seconds),
            )
            log(f"  {run}")
            runs.append(run)
        runs += identify_lines(settings, database, bodies)
    memory_lines = int(env("BENCH_IMPORT_MEMORY_LINES", "5000000"))
    if memory_lines and "sqlite" in settings.databases:
        runs.append(memory_run(settings, memory_lines))
    return runs


def orders_file(lines: int) -> Path:
    """The order history of `lines` lines, written once."""
    path = BENCH / ".data" / f"orders-{lines}.csv"
    if not path.exists():
        log(f"writing {lines:,} order lines")
        write_orders(path, lines)
    return path


def identify_lines(
    settings: Settings, database: Database, bodies: Path
) -> list[IdentifyRun]:
    """The service as shipped (app_server: gunicorn.conf.py, BENCH_WORKERS
    workers) on an empty database, sent the order lines through /identify in
    the order the import applies them (bench/lines.lua): one unrecorded
    second, then BENCH_REPEATS runs of BENCH_DURATION s, each carrying on
    down the file where the last stopped, so that no line is sent twice and
    the database holds every earlier line, as the import's does."""
    log(f"{database.kind}: the order lines through /identify")
    database.seed(0)
    service = app_server(settings, database)
    service.start("/health")
    runs = []
    line = 0
    try:
        for repeat in range(-1, settings.repeats):
            short = settings if repeat >= 0 else replace(settings, duration=1)
            result = run_wrk(
                short, "lines.lua", service.url, [bodies, line, settings.threads]
            )
            if repeat >= 0:
                run = IdentifyRun(database.kind, repeat, line, **result)
                log(f"  {run}")
                runs.append(run)
            line = result["next_line"]
    finally:
        service.stop()
    return runs


def memory_run(settings: Settings, lines: int) -> MemoryRun:
    """Import `lines` order lines into an empty SQLite database."""
    path = orders_file(lines)
    database = Database("sqlite", settings)
    log(f"sqlite: import {lines:,} lines into 0 contacts, for its peak memory")
    database.seed(0)
    seconds, peak = _timed(database, ["import", str(path)])
    run = MemoryRun(
        "sqlite", lines, round(seconds, 2), round(lines / seconds), round(peak, 1)
    )
    log(f"  {run}")
    return run


def _timed(database: Database, command: list[str]) -> tuple[float, float]:
    """Run `flask --app app contacts COMMAND` on the database; return the
    seconds its log line gives (the work, without the process's start) and
    its peak resident memory in MB (bench/peak.py)."""
    flask = [sys.executable, "-m", "flask", "--app", "app", "contacts", *command]
    done = subprocess.run(
        [sys.executable, str(BENCH / "peak.py"), *flask],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"contacts {command[0]} failed: {done.stderr}")
    *logged, peak = done.stderr.strip().splitlines()
    # ru_maxrss is in KiB on Linux.
    return float(json.loads(logged[-1])["seconds"]), int(peak) / 1024


def import_section(entry: Any, runs: list[Any]) -> list[str]:
    """The series' tables and its targets, each met or not."""
    imports = [run for run in runs if isinstance(run, ImportRun)]
    identifies = [run for run in runs if isinstance(run, IdentifyRun)]
    memory = [run for run in runs if isinstance(run, MemoryRun)]
    lines = [
        "`flask --app app contacts import` of a shop's order history"
        " (bench/orders.py: customers with 1 to 5 orders, one in five joined"
        " later by a shared phone), then `contacts export` of every customer"
        " (contacts: each customer's primary and secondaries).",
        "",
        f"Targets: {EMPTY_TARGETS['sqlite']:,} lines/s on SQLite and"
        f" {EMPTY_TARGETS['postgresql']:,} on PostgreSQL into an empty database,"
        " half that into a seeded one; at least"
        f" {IDENTIFY_TARGET} x the rate of the same lines through POST /identify;"
        f" peak memory under {MEMORY_TARGET_MB} MB for a 1,000,000-line file and"
        f" for 5,000,000; export {EXPORT_TARGET:,} contacts/s.",
        "",
        "| database | contacts before | lines | import s | lines/s | peak RSS MB"
        " | customers exported | contacts exported | export s | customers/s"
        " | contacts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for run in imports:
        contacts, per_s = (
            ("not counted", "not counted")
            if run.contacts is None or run.contacts_per_s is None
            else (f"{run.contacts:,}", f"{run.contacts_per_s:,}")
        )
        lines.append(
            f"| {run.database} | {run.seeded:,} | {run.lines:,} | {run.seconds}"
            f" | {run.lines_per_s:,} | {run.peak_rss_mb} | {run.exported:,}"
            f" | {contacts} | {run.export_seconds} | {run.customers_per_s:,}"
            f" | {per_s} |"
        )
        target = EMPTY_TARGETS[run.database] // (2 if run.seeded else 1)
        verdicts += [
            f"- {run.database}, {run.lines:,} lines into {run.seeded:,} contacts:"
            f" >= {target:,} lines/s: {run.lines_per_s:,},"
            f" {met(run.lines_per_s >= target)}; peak RSS < {MEMORY_TARGET_MB} MB:"
            f" {run.peak_rss_mb} MB, {met(run.peak_rss_mb < MEMORY_TARGET_MB)}"
        ]
        if run.contacts_per_s is not None:
            verdicts[-1] += (
                f"; export >= {EXPORT_TARGET:,} contacts/s: {run.contacts_per_s:,},"
                f" {met(run.contacts_per_s >= EXPORT_TARGET)}"
            )
    lines += ["", *verdicts, ""]
    if identifies:
        lines += identify_section(entry, imports, identifies)
    if memory:
        lines += memory_section(memory)
    return lines


def identify_section(
    entry: Any, imports: list[ImportRun], runs: list[IdentifyRun]
) -> list[str]:
    settings = entry.settings
    lines = [
        "The same lines, in the order the import applies them (createdAt, then"
        " file order), each sent as its email and phoneNumber to POST /identify"
        " of the service as shipped (gunicorn.conf.py,"
        f" {settings['workers']} workers) on an empty database, by wrk"
        f" (bench/lines.lua, {settings['connections']} connections,"
        f" {settings['threads']} thread): after one unrecorded second,"
        f" {settings['repeats']} run(s) of {settings['duration']} s, each carrying"
        " on down the file where the last stopped, so that no line is sent twice"
        " and the database holds the earlier lines, as the import's does (lines"
        " sent: the span of the file the runs covered). /identify lines/s is"
        " the median of the runs; the import's is its rate into an empty"
        " database.",
        "",
        "| database | lines sent | /identify lines/s | p50 ms | p99 ms | failed"
        " | import lines/s | import ÷ /identify |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = wrk_cells(runs, lambda run: (run.database,))
    verdicts = []
    for (database,), cell in cells.items():
        mine = [run for run in runs if run.database == database]
        span = f"{mine[0].first_line:,} to {mine[-1].next_line:,}"
        empty = next(
            (run for run in imports if run.database == database and not run.seeded),
            None,
        )
        if empty is None:
            lines.append(f"| {database} | {span}{cell} | not measured | |")
            continue
        ratio = empty.lines_per_s / statistics.median(run.rps for run in mine)
        lines.append(
            f"| {database} | {span}{cell} {empty.lines_per_s:,} | x{ratio:.1f} |"
        )
        verdicts.append(
            f"- {database}: the import >= {IDENTIFY_TARGET} x /identify:"
            f" x{ratio:.1f}, {met(ratio >= IDENTIFY_TARGET)}"
        )
    return [*lines, "", *verdicts, ""]


def memory_section(runs: list[MemoryRun]) -> list[str]:
    lines = [
        "A larger file of the same history imported into an empty database"
        " (BENCH_IMPORT_MEMORY_LINES), for the import process's peak memory:",
        "",
        "| database | lines | import s | lines/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for run in runs:
        lines.append(
            f"| {run.database} | {run.lines:,} | {run.seconds}"
            f" | {run.lines_per_s:,} | {run.peak_rss_mb} |"
        )
        verdicts.append(
            f"- {run.database}, {run.lines:,} lines: peak RSS < {MEMORY_TARGET_MB}"
            f" MB: {run.peak_rss_mb} MB, {met(run.peak_rss_mb < MEMORY_TARGET_MB)}"
        )
    return [*lines, "", *verdicts, ""]


def met(held: bool) -> str:
    return "met" if held else "NOT met"
