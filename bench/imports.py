"""The import series: `flask --app app contacts import` of a shop's order
history (bench/orders.py) into an empty database and into one seeded with
BENCH_IMPORT_SEEDED contacts, then `contacts export` of the result, on each
engine: lines/s, peak memory of the import process, customers/s."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from harness import BENCH, ROOT, Database, Settings, env, log
from orders import write_orders

IMPORT_DATABASES = ("sqlite", "postgresql")


@dataclass
class ImportRun:
    database: str
    seeded: int
    lines: int
    seconds: float
    lines_per_s: float
    peak_rss_mb: float
    exported: int
    export_seconds: float
    customers_per_s: float


def import_series(settings: Settings) -> list[ImportRun]:
    """For each database of BENCH_DATABASES that is an engine, and each of 0
    and BENCH_IMPORT_SEEDED contacts seeded: import BENCH_IMPORT_LINES order
    lines, then export every customer."""
    lines = int(env("BENCH_IMPORT_LINES", "1000000"))
    seeded_sizes = (0, int(env("BENCH_IMPORT_SEEDED", "1000000")))
    path = BENCH / ".data" / f"orders-{lines}.csv"
    if not path.exists():
        log(f"writing {lines:,} order lines")
        write_orders(path, lines)
    runs = []
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
            with out.open() as exported:
                customers = sum(1 for _ in exported)
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
            )
            log(f"  {run}")
            runs.append(run)
    return runs


def _timed(database: Database, command: list[str]) -> tuple[float, float]:
    """Run `flask --app app contacts COMMAND` on the database; return the
    seconds its log line gives (the work, without the process's start) and
    its peak resident memory in MB."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "contacts", *command],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors = process.stderr.read().decode() if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"contacts {command[0]} failed: {errors}")
    logged = json.loads(errors.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux.
    return float(logged["seconds"]), usage.ru_maxrss / 1024


def import_report(runs: list[ImportRun]) -> list[str]:
    """The series' table."""
    lines = [
        "`flask --app app contacts import` of a shop's order history"
        " (bench/orders.py: customers with 1 to 5 orders, one in five joined"
        " later by a shared phone), then `contacts export` of every customer.",
        "",
        "| database | contacts before | lines | import s | lines/s | peak RSS MB"
        " | customers exported | export s | customers/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.database} | {run.seeded:,} | {run.lines:,} | {run.seconds}"
            f" | {run.lines_per_s:,} | {run.peak_rss_mb} | {run.exported:,}"
            f" | {run.export_seconds} | {run.customers_per_s:,} |"
        )
    return lines
