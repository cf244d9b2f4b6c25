"""Benchmark POST /identify against a bare Flask floor and write BENCHMARKS.md.

For each database and size: seed (bench/seed.py), serve the app exactly as
production does (migrations applied, gunicorn with gunicorn.conf.py) and the
floor (bench/floor.py) under the same settings, then for each repetition and
workload run wrk against the floor and then against the service, so that each
service number has a floor number measured next to it. Lookups and new
primaries are also run against the references (bench/reference.py:
one SELECT, one INSERT and COMMIT), right after the service. Medians are
reported.

Detach and erase consume what they touch (every request splits or erases a
different seeded 5-row customer): they run after the other workloads, each
repetition on a database seeded for them alone.

With BENCH_BASELINE set to a git revision, that revision of the app is
served too (from a worktree under bench/.data, on the same database) and
measured right after the service on each workload it can serve, so that a
change is compared with what came before it in one run.

Settings, all from the environment:
  BENCH_BASELINE    unset               a git revision to measure beside the service
  BENCH_DATABASES   sqlite,sqlite-normal,postgresql (sqlite-normal: SQLite with
                    SQLITE_SYNCHRONOUS=NORMAL, identify's writes only)
  BENCH_SIZES       10000,1000000       contacts seeded
  BENCH_WORKLOADS   lookup,secondary,primary,merge,mix,customers_lookup,history,
                    detach,erase
  BENCH_DURATION    10                  seconds per wrk run
  BENCH_REPEATS     3                   runs per workload, alternating with the floor
  BENCH_CONNECTIONS 8                   wrk connections (BENCH_THREADS 1 wrk thread)
  BENCH_RESEED_MAX  100000              reseed before every repetition up to this size
  BENCH_PG_URL      postgresql://postgres@127.0.0.1/bench
  BENCH_PORT        28001               the service; then floor, references, baseline
  BENCH_OUT         BENCHMARKS.md       the report; every run goes beside it as .json
  BENCH_KEEP        unset               when 1, the report already in BENCH_OUT is
                                        kept below the new one, and its runs in the
                                        .json before the new ones
  BENCH_SERIES      matrix,cluster,flood,detach  what to run: the matrix above,
                                        the cluster-size series (cluster_series),
                                        the placeholder flood (placeholder_flood)
                                        and the large detach (detach_series)
  BENCH_CLUSTER_ROWS 1,100,1000,2000,5000  rows of the one cluster of that series
  WEB_CONCURRENCY   gunicorn workers, as in production (gunicorn.conf.py)
Only ever loads 127.0.0.1.
"""

import http.client
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
IDENTIFY_WORKLOADS = ("lookup", "secondary", "primary", "merge", "mix")
# Each request consumes a seeded customer (see measure).
CORRECTIONS = ("detach", "erase")
WORKLOADS = (*IDENTIFY_WORKLOADS, "customers_lookup", "history", *CORRECTIONS)
# Workloads that never write: synchronous changes nothing for them.
READS = ("lookup", "customers_lookup", "history")
DESCRIPTIONS = {
    "lookup": "identifiers of an existing row; inserts nothing",
    "secondary": "existing phone + brand-new email; inserts a secondary",
    "primary": "brand-new email and phone; inserts a primary",
    "merge": "email of one cluster + phone of another; merges two primaries",
    "mix": "80% lookup, 15% secondary, 4% primary, 1% merge",
    "customers_lookup": "POST /customers/lookup with the lookup bodies; never writes",
    "history": "GET /customers/{id}/history of a 5-row customer (5 events)",
    "detach": "POST /customers/{id}/detach of a 5-row customer's middle phone,"
    " the only value joining its rows 0-2 to rows 3-4: no row is deleted, two rows"
    " lose the phone, the customer splits in two (3 rows and 2), the phone is"
    " nulled in 2 events and 3 are added; each request a different customer",
    "erase": "DELETE /customers/{id} of a 5-row customer: its 5 rows are deleted,"
    " its 6 values nulled in its 5 events, 1 event added; each request a"
    " different customer",
}


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


@dataclass
class Settings:
    databases: list[str]
    sizes: list[int]
    workloads: list[str]
    duration: int
    repeats: int
    connections: int
    threads: int
    reseed_max: int
    pg_url: str
    port: int
    out: Path
    keep: bool
    baseline: str | None

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            databases=env_list("BENCH_DATABASES", "sqlite,sqlite-normal,postgresql"),
            sizes=[int(size) for size in env_list("BENCH_SIZES", "10000,1000000")],
            workloads=env_list("BENCH_WORKLOADS", ",".join(WORKLOADS)),
            duration=int(env("BENCH_DURATION", "10")),
            repeats=int(env("BENCH_REPEATS", "3")),
            connections=int(env("BENCH_CONNECTIONS", "8")),
            # One thread: when merges run out of pairs it stops every connection
            # at once. With two, the first to stop left connections open that
            # held gunicorn workers in their 2 s graceful close, stalling the
            # other thread's last requests (10k merges: p99 1.6 s, 400 req/s).
            threads=int(env("BENCH_THREADS", "1")),
            reseed_max=int(env("BENCH_RESEED_MAX", "100000")),
            pg_url=env("BENCH_PG_URL", "postgresql://postgres@127.0.0.1/bench"),
            port=int(env("BENCH_PORT", "28001")),
            out=ROOT / env("BENCH_OUT", "BENCHMARKS.md"),
            keep=env("BENCH_KEEP", "") == "1",
            baseline=os.environ.get("BENCH_BASELINE") or None,
        )


class Database:
    """Where a size is seeded, the settings the service runs it with, and what
    the harness reads back to check a run.

    `sqlite-normal` is SQLite with SQLITE_SYNCHRONOUS=NORMAL, measured on the
    workloads of /identify that write only (synchronous changes nothing for a
    lookup), to show beside `sqlite` what the default FULL costs."""

    def __init__(self, kind: str, settings: Settings) -> None:
        self.kind = kind
        self.engine = "sqlite" if kind.startswith("sqlite") else kind
        self.env: dict[str, str] = {}
        self.workloads = settings.workloads
        if kind in ("sqlite", "sqlite-normal"):
            data = BENCH / ".data"
            data.mkdir(exist_ok=True)
            self.path = str(data / "bench.db")
            self.url = f"sqlite:///{self.path}"
            if kind == "sqlite-normal":
                self.env = {"SQLITE_SYNCHRONOUS": "NORMAL"}
                self.workloads = [
                    w
                    for w in settings.workloads
                    if w not in READS and w not in CORRECTIONS
                ]
        elif kind == "postgresql":
            self.url = settings.pg_url
        else:
            raise SystemExit(
                f"unknown database {kind!r}: sqlite, sqlite-normal or postgresql"
            )

    def seed(self, size: int, large: int = 0, large_rows: int = 0) -> dict[str, Any]:
        """Seed `size` contacts in clusters, then `large` customers of
        `large_rows` rows (bench/seed.py)."""
        arguments = [str(size), *([str(large), str(large_rows)] if large else [])]
        output = subprocess.run(
            [sys.executable, str(BENCH / "seed.py"), *arguments],
            env={**os.environ, "DATABASE_URL": self.url},
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(output.splitlines()[-1])  # type: ignore[no-any-return]

    def counts(self) -> tuple[int, int]:
        """(live rows, live primaries)."""
        query = (
            "SELECT count(*), coalesce(sum(CASE WHEN link_precedence = 'primary'"
            " THEN 1 ELSE 0 END), 0) FROM contact WHERE deleted_at IS NULL"
        )
        if self.engine == "sqlite":
            with sqlite3.connect(self.path) as connection:
                rows, primaries = connection.execute(query).fetchone()
        else:
            with psycopg.connect(self.url) as connection:
                row = connection.execute(query).fetchone()
                assert row is not None
                rows, primaries = row
        return int(rows), int(primaries)


class Server:
    """A gunicorn started as production starts it: gunicorn.conf.py, its env."""

    def __init__(
        self, target: str, port: int, extra_env: dict[str, str], cwd: Path = ROOT
    ) -> None:
        self.target = target
        self.cwd = cwd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.env = {**os.environ, **extra_env, "HOST": HOST, "PORT": str(port)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str) -> None:
        log = open(BENCH / ".data" / f"gunicorn-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", self.target],
            cwd=self.cwd,
            env=self.env,
            # The access log goes to stdout in production too; here nobody reads it.
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    f"{self.url}{ready_path}",
                    data=None
                    if ready_path == "/health"
                    else b'{"email": "ready@seed.example.com", "phoneNumber": null}',
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.target} did not come up on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None


@dataclass
class Run:
    database: str
    size: int
    workload: str
    repeat: int
    target: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    stopped_threads: int
    merge_fallbacks: int
    delta_rows: int | None = None
    delta_primaries: int | None = None


def wrk(
    settings: Settings, url: str, workload: str, seed: dict[str, Any], args: list[int]
) -> dict[str, Any]:
    script_args = [workload, seed["full_clusters"], *args, settings.threads]
    return run_wrk(settings, "identify.lua", url, script_args)


def run_wrk(
    settings: Settings, script: str, url: str, script_args: list[Any]
) -> dict[str, Any]:
    """Run wrk with a script of bench/ and return the JSON of its RESULT line."""
    command = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{settings.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / script),
        url,
        "--",
        *map(str, script_args),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    for line in output.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise SystemExit(f"wrk printed no result:\n{output.stdout}\n{output.stderr}")


def measure(
    settings: Settings, database: Database, size: int, floor: Server
) -> tuple[list[Run], list[dict[str, Any]]]:
    """Every repetition of every workload of `database` at `size`, and the
    seedings they ran on."""
    matrix = Matrix(settings, database, size, floor)
    # The corrections split and erase the 5-row customers that the other
    # workloads read, merge and add to: they come last in a repetition, on a
    # database seeded for them, and the next repetition is seeded afresh.
    phases = [
        phase
        for phase in (
            [w for w in database.workloads if w not in CORRECTIONS],
            [w for w in database.workloads if w in CORRECTIONS],
        )
        if phase
    ]
    fresh = corrected = False
    for repeat in range(settings.repeats):
        for workloads in phases:
            corrections = workloads[0] in CORRECTIONS
            if not matrix.seeds or (
                not fresh and (corrections or corrected or size <= settings.reseed_max)
            ):
                matrix.reseed()
                corrected = False
            fresh = False
            matrix.run_phase(workloads, repeat)
            corrected = corrected or corrections
    return matrix.runs, matrix.seeds


class Matrix:
    """The servers of one database and size, the seedings and the runs."""

    def __init__(
        self, settings: Settings, database: Database, size: int, floor: Server
    ) -> None:
        self.settings = settings
        self.database = database
        self.size = size
        self.floor = floor
        self.service = Server(
            "app:app", settings.port, {"DATABASE_URL": database.url, **database.env}
        )
        self.reference = Server(
            "bench.reference:app", settings.port + 2, {"DATABASE_URL": database.url}
        )
        self.baseline = None
        if settings.baseline:
            self.baseline = Server(
                "app:app",
                settings.port + 3,
                {"DATABASE_URL": database.url},
                cwd=baseline_tree(settings.baseline),
            )
        self.runs: list[Run] = []
        self.seeds: list[dict[str, Any]] = []
        self.pairs_per_seed = 0
        self.run_number = 0
        self.pair_cursor = 0

    def reseed(self) -> None:
        seed = self.database.seed(self.size)
        self.seeds.append(seed)
        log(f"  seeded {seed}")
        settings = self.settings
        reseeds_left = 1 if self.size <= settings.reseed_max else settings.repeats
        self.pairs_per_seed = seed["full_clusters"] // 2 // reseeds_left
        self.run_number = 0
        self.pair_cursor = 0

    def spans(self, workload: str) -> dict[str, tuple[int, int]]:
        """The span of seeded clusters that each measured target uses: merge
        pairs, or 5-row customers for the corrections. The floor and the
        references never run out."""
        # A quarter of each repetition's pairs is kept for the mix's merges.
        mix_pairs = self.pairs_per_seed // 4
        # The corrections share the 5-row customers of a seeding.
        fives = self.seeds[-1]["full_clusters"] // 5
        if workload == "merge":
            pairs = (
                self.pair_cursor + mix_pairs,
                self.pair_cursor + self.pairs_per_seed,
            )
        elif workload == "detach":
            pairs = (0, fives // 2)
        elif workload == "erase":
            pairs = (fives // 2, fives)
        else:
            pairs = (self.pair_cursor, self.pair_cursor + mix_pairs)
        if self.baseline is None or workload not in IDENTIFY_WORKLOADS:
            return {"service": pairs}
        # The service and the baseline merge disjoint halves.
        middle = (pairs[0] + pairs[1]) // 2
        return {"service": (pairs[0], middle), "baseline": (middle, pairs[1])}

    def run_phase(self, workloads: list[str], repeat: int) -> None:
        """Serve the database, warm every server up, then run each workload
        against the floor and then the service (and its reference and
        baseline)."""
        seed = self.seeds[-1]
        service = self.service
        with_reference = any(workload in REFERENCES for workload in workloads)
        baseline = self.baseline
        if not any(workload in IDENTIFY_WORKLOADS for workload in workloads):
            baseline = None
        # Production applies migrations before serving (Procfile: release).
        subprocess.run(
            [str(BIN / "flask"), "--app", "app", "db", "upgrade"],
            cwd=ROOT,
            env=service.env,
            check=True,
            capture_output=True,
        )
        try:
            service.start("/health")
            warm = [self.floor.url, service.url]
            if with_reference:
                self.reference.start("/select")
                warm.append(f"{self.reference.url}/select")
            if baseline is not None:
                # Its migrations may be older than the database's: no /health.
                baseline.start("/identify")
                warm.append(baseline.url)
            # Every worker opens its connections and warms its caches before
            # anything is measured: one second of lookups each, not recorded.
            warm_up = replace(self.settings, duration=1)
            for url in warm:
                wrk(warm_up, url, "lookup", seed, [self.run_number, 0, 0])
            for workload in workloads:
                targets = [("floor", self.floor.url), ("service", service.url)]
                if workload in REFERENCES:
                    path = REFERENCES[workload]
                    targets.append(("reference", f"{self.reference.url}{path}"))
                if baseline is not None and workload in IDENTIFY_WORKLOADS:
                    targets.append(("baseline", baseline.url))
                spans = self.spans(workload)
                for target, url in targets:
                    self.run(workload, repeat, target, url, spans.get(target))
            if not any(workload in CORRECTIONS for workload in workloads):
                self.pair_cursor += self.pairs_per_seed
        finally:
            service.stop()
            self.reference.stop()
            if baseline is not None:
                baseline.stop()

    def run(
        self,
        workload: str,
        repeat: int,
        target: str,
        url: str,
        span: tuple[int, int] | None,
    ) -> None:
        """One wrk run; with a span, the target is measured: the table's
        change over the run is recorded."""
        database = self.database
        before = database.counts() if span is not None else None
        result = wrk(
            self.settings,
            url,
            workload,
            self.seeds[-1],
            [self.run_number, *(span or (0, 10**9))],
        )
        self.run_number += 1
        run = Run(database.kind, self.size, workload, repeat, target, **result)
        if before is not None:
            after = database.counts()
            run.delta_rows = after[0] - before[0]
            run.delta_primaries = after[1] - before[1]
        self.runs.append(run)
        log(f"  {format_run(run)}")


def baseline_tree(revision: str) -> Path:
    """A worktree of `revision` under bench/.data, made once per commit."""
    sha = git("rev-parse", "--short", revision)
    if not sha:
        raise SystemExit(f"BENCH_BASELINE={revision} is not a git revision here")
    tree = BENCH / ".data" / f"baseline-{sha}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree


# The reference (bench/reference.py) that each workload is compared with: the
# one database operation it cannot do without.
REFERENCES = {"lookup": "/select", "primary": "/insert"}
REFERENCE_NAMES = {"lookup": "one SELECT", "primary": "one INSERT and COMMIT"}


def format_run(run: Run) -> str:
    text = (
        f"{run.workload:9} #{run.repeat} {run.target:9} {run.rps:8.1f} req/s"
        f"  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms"
        f"  non-2xx {run.non_2xx}  errors {run.socket_errors}"
    )
    if run.delta_rows is not None:
        text += f"  Δrows {run.delta_rows}  Δprimaries {run.delta_primaries}"
    return text


def log(message: str) -> None:
    print(message, flush=True)


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per database, size and workload: medians over the repetitions."""
    table = []
    keys = dict.fromkeys((run.database, run.size, run.workload) for run in runs)
    for database, size, workload in keys:
        mine = [
            run
            for run in runs
            if (run.database, run.size, run.workload) == (database, size, workload)
        ]
        service = [run for run in mine if run.target == "service"]
        floor = [run for run in mine if run.target == "floor"]
        reference = [run for run in mine if run.target == "reference"]
        baseline = [run for run in mine if run.target == "baseline"]
        table.append(
            {
                "database": database,
                "size": size,
                "workload": workload,
                "rps": statistics.median(run.rps for run in service),
                "p50_ms": statistics.median(run.p50_ms for run in service),
                "p99_ms": statistics.median(run.p99_ms for run in service),
                "floor_rps": statistics.median(run.rps for run in floor),
                # Each service run against the floor run just before it.
                "ratio": statistics.median(
                    s.rps / f.rps for s, f in zip(service, floor, strict=True)
                ),
                "reference_rps": statistics.median(run.rps for run in reference)
                if reference
                else None,
                "reference_ratio": statistics.median(
                    r.rps / f.rps for r, f in zip(reference, floor, strict=True)
                )
                if reference
                else None,
                # Each service run against the baseline run just after it.
                "baseline_rps": statistics.median(run.rps for run in baseline)
                if baseline
                else None,
                "baseline_p99_ms": statistics.median(run.p99_ms for run in baseline)
                if baseline
                else None,
                "baseline_ratio": statistics.median(
                    s.rps / b.rps for s, b in zip(service, baseline, strict=True)
                )
                if baseline
                else None,
                "non_2xx": sum(run.non_2xx for run in service + reference + baseline),
                "socket_errors": sum(
                    run.socket_errors for run in service + reference + baseline
                ),
                "requests": sum(run.requests for run in service),
                # What the runs did to the table, per request wrk counted.
                "rows_per_request": sum(run.delta_rows or 0 for run in service)
                / max(1, sum(run.requests for run in service)),
                "primaries_per_request": sum(
                    run.delta_primaries or 0 for run in service
                )
                / max(1, sum(run.requests for run in service)),
            }
        )
    return table


# Targets at the largest size: ratio to the floor, p99 in ms.
RATIO_TARGETS = {
    "sqlite": {"lookup": 0.55, "secondary": 0.28, "primary": 0.28, "merge": 0.20},
    "postgresql": {"lookup": 0.45},
}
P99_TARGETS = {"lookup": 20.0, "secondary": 40.0, "primary": 40.0, "merge": 40.0}
FLATNESS_TARGET = 0.9
# Issue 10: writes keep 0.9 of the baseline's throughput; a history read
# reaches 0.3 of the floor; on SQLite a lookup reaches the one-SELECT
# reference; /customers/lookup is as fast as an identify lookup.
BASELINE_TARGET = {"secondary": 0.9, "primary": 0.9, "merge": 0.9}
HISTORY_TARGET = 0.3
REFERENCE_TARGETS = {"sqlite": {"lookup": 1.0}}


def targets(table: list[dict[str, Any]], database: str) -> list[str]:
    """One line per performance target, measured against the largest and
    smallest sizes of this database."""
    rows = [row for row in table if row["database"] == database]
    if not rows:
        return []
    large = max(row["size"] for row in rows)
    small = min(row["size"] for row in rows)
    at = {(row["size"], row["workload"]): row for row in rows}
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for workload, target in RATIO_TARGETS.get(database, {}).items():
        if (row := at.get((large, workload))) is not None:
            lines.append(
                f"- {workload} ratio to floor >= {target}: {row['ratio']:.2f},"
                f" {verdict(row['ratio'] >= target)}"
            )
    for workload, target in BASELINE_TARGET.items():
        row = at.get((large, workload))
        if row is not None and row["baseline_ratio"] is not None:
            share = row["baseline_ratio"]
            lines.append(
                f"- {workload} req/s >= {target} x baseline: x{share:.2f},"
                f" {verdict(share >= target)}"
            )
    for workload, target in REFERENCE_TARGETS.get(database, {}).items():
        row = at.get((large, workload))
        if row is not None and row["reference_ratio"]:
            share = row["ratio"] / row["reference_ratio"]
            lines.append(
                f"- {workload} >= {target} x the one-SELECT reference: x{share:.2f},"
                f" {verdict(share >= target)}"
            )
    if (row := at.get((large, "history"))) is not None:
        lines.append(
            f"- history ratio to floor >= {HISTORY_TARGET}: {row['ratio']:.2f},"
            f" {verdict(row['ratio'] >= HISTORY_TARGET)}"
        )
    read, lookup = at.get((large, "customers_lookup")), at.get((large, "lookup"))
    if read is not None and lookup is not None:
        share = read["ratio"] / lookup["ratio"]
        lines.append(
            f"- customers_lookup >= identify lookup (ratios to floor):"
            f" x{share:.2f}, {verdict(share >= 1.0)}"
        )
    for workload, limit in P99_TARGETS.items():
        if (row := at.get((large, workload))) is not None:
            lines.append(
                f"- {workload} p99 <= {limit:.0f} ms: {row['p99_ms']:.1f} ms,"
                f" {verdict(row['p99_ms'] <= limit)}"
            )
    if large != small:
        for (size, workload), row in at.items():
            if size == large and (small, workload) in at:
                rps = row["rps"] / at[small, workload]["rps"]
                ratio = row["ratio"] / at[small, workload]["ratio"]
                lines.append(
                    f"- {workload} req/s at {large:,} >= {FLATNESS_TARGET} x"
                    f" {small:,}: x{rps:.2f} ({verdict(rps >= FLATNESS_TARGET)});"
                    f" ratio to floor x{ratio:.2f}"
                    f" ({verdict(ratio >= FLATNESS_TARGET)})"
                )
    return lines


def synchronous_comparison(table: list[dict[str, Any]]) -> list[str]:
    """SQLite's writes with synchronous=FULL (the default) beside NORMAL, where
    both were measured: what durability across power loss costs."""
    full = {(r["size"], r["workload"]): r for r in table if r["database"] == "sqlite"}
    pairs = [
        (full[row["size"], row["workload"]], row)
        for row in table
        if row["database"] == "sqlite-normal" and (row["size"], row["workload"]) in full
    ]
    if not pairs:
        return []
    lines = [
        "## SQLite: synchronous=FULL (default) against NORMAL",
        "",
        "FULL syncs every commit to disk before answering, so an acknowledged"
        " write survives an OS crash or power loss; NORMAL may lose the last"
        " ones (SQLITE_SYNCHRONOUS=NORMAL).",
        "",
        "| contacts | workload | FULL req/s | NORMAL req/s | FULL ÷ NORMAL"
        " | FULL p99 ms | NORMAL p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for full_row, normal_row in pairs:
        lines.append(
            f"| {full_row['size']:,} | {full_row['workload']}"
            f" | {full_row['rps']:.0f} | {normal_row['rps']:.0f}"
            f" | {full_row['rps'] / normal_row['rps']:.2f}"
            f" | {full_row['p99_ms']:.1f} | {normal_row['p99_ms']:.1f} |"
        )
    return [*lines, ""]


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def commit() -> str:
    """The commit measured, marked when the work tree had changes."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head or 'unknown'}{' with local changes' if dirty else ''}"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def gunicorn_settings() -> str:
    """The worker settings that gunicorn.conf.py gave the servers, read by
    running it (in a process of its own: it sets environment variables)."""
    read = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py');"
        " print(json.dumps([c[k] for k in"
        " ('workers', 'threads', 'worker_class', 'keepalive')]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", read],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(BENCH / ".data")},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    workers, threads, worker_class, keepalive = json.loads(output)
    return (
        f"gunicorn.conf.py: {workers} workers (WEB_CONCURRENCY) x {threads} threads"
        f" (WEB_THREADS), worker class {worker_class} (gthread; keep-alive"
        f" {keepalive} s)"
    )


def report(
    settings: Settings,
    table: list[dict[str, Any]],
    seeds: dict[str, list[dict[str, Any]]],
    started: datetime,
    minutes: float,
) -> str:
    facts = machine()
    command = " ".join(
        [
            *(
                f"{name}={shlex.quote(value)}"
                for name, value in sorted(os.environ.items())
                if name.startswith("BENCH_") or name == "WEB_CONCURRENCY"
            ),
            "make bench",
        ]
    )
    lines = [
        "# Benchmarks",
        "",
        "The API under wrk, against the bare Flask floor (bench/floor.py:",
        "parse the JSON body, answer a small JSON object) served by the same",
        "gunicorn settings. Written by `make bench` (bench/run.py); do not edit",
        "by hand.",
        "",
        f"- Command: `{command}`, at commit {commit()}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; the matrix took {minutes:.0f} min",
        f"- Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['memory']} RAM,"
        f" Python {facts['python']}, Linux {facts['kernel']}; shared with other"
        " work, so noisy",
        f"- Server: {gunicorn_settings()}, bound to 127.0.0.1, logging as in"
        " production (its output discarded)",
        f"- Load: wrk -t{settings.threads} -c{settings.connections}"
        f" -d{settings.duration}s, {settings.repeats} runs per workload, each run"
        " right after a floor run with the same script; before them, each server"
        " gets 1 s of lookups, not recorded, to open its connections",
        "- Numbers: medians over the runs; ratio = median of (service req/s /"
        " req/s of the floor run just before it)",
        "- Checks: non-2xx counts wrk's non-2xx answers and socket errors;"
        " Δrows/req and Δprimaries/req are the table's change over the service"
        " runs divided by the requests wrk counted (a lookup must be +0/+0, a new"
        " secondary +1/+0, a new primary +1/+1, a merge +0/-1, a detach +0/+1,"
        " an erase -5/-1; the requests still in flight when wrk stops, at most"
        " one per connection, change the table but are not counted)",
        "- Merges use disjoint pairs of seeded clusters; where a size has too few"
        " (10,000 contacts: 1,250 pairs per seeding) the run stops when they run"
        " out and its rate is taken over the time it ran (one wrk thread, so that"
        " all its connections stop together)",
        "- Detach and erase each use half of the seeded 5-row customers, each"
        " customer once (10,000 contacts: 333 each; 1,000,000: 33,333), and run"
        " after the other workloads on a database seeded for them alone, in"
        " every repetition; they stop like merges if their customers run out."
        " The floor answers them without a database as it answers the others;"
        " no target is set against it for them",
        "",
        "Workloads:",
        "",
        *(f"- {name}: {DESCRIPTIONS[name]}" for name in settings.workloads),
        "",
    ]
    for database in settings.databases:
        lines += [
            f"## {database}",
            "",
            "| contacts | workload | req/s | p50 ms | p99 ms | floor req/s"
            " | ratio to floor | non-2xx | Δrows/req | Δprimaries/req |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in table:
            if row["database"] != database:
                continue
            lines.append(
                f"| {row['size']:,} | {row['workload']} | {row['rps']:.0f}"
                f" | {row['p50_ms']:.1f} | {row['p99_ms']:.1f}"
                f" | {row['floor_rps']:.0f} | {row['ratio']:.2f}"
                f" | {row['non_2xx'] + row['socket_errors']}"
                f" | {row['rows_per_request']:+.2f}"
                f" | {row['primaries_per_request']:+.2f} |"
            )
        mine = [row for row in table if row["database"] == database]
        if any(row["reference_rps"] is not None for row in mine):
            lines += [
                "",
                "The references (bench/reference.py), each run right after the"
                " service, against the same floor run:",
                "",
                "| contacts | reference | req/s | ratio to floor | service workload"
                " | service ÷ reference |",
                "|---:|---|---:|---:|---|---:|",
            ]
        for row in mine:
            if row["reference_rps"] is not None:
                lines.append(
                    f"| {row['size']:,} | {REFERENCE_NAMES[row['workload']]}"
                    f" | {row['reference_rps']:.0f} | {row['reference_ratio']:.2f}"
                    f" | {row['workload']}"
                    f" | {row['ratio'] / row['reference_ratio']:.2f} |"
                )
        if any(row["baseline_rps"] for row in mine):
            lines += [
                "",
                f"Beside the baseline (BENCH_BASELINE={settings.baseline}, commit"
                f" {git('rev-parse', '--short', settings.baseline or 'HEAD')}),"
                " each baseline run right after the service run, on the same"
                " database:",
                "",
                "| contacts | workload | service req/s | baseline req/s"
                " | service ÷ baseline | baseline p99 ms |",
                "|---:|---|---:|---:|---:|---:|",
            ]
            for row in table:
                if row["database"] == database and row["baseline_rps"]:
                    lines.append(
                        f"| {row['size']:,} | {row['workload']} | {row['rps']:.0f}"
                        f" | {row['baseline_rps']:.0f}"
                        f" | {row['baseline_ratio']:.2f}"
                        f" | {row['baseline_p99_ms']:.1f} |"
                    )
        largest = max(row["size"] for row in mine)
        if verdicts := targets(table, database):
            lines += ["", f"Targets at {largest:,} contacts:", "", *verdicts]
        lines += ["", "Seeding (bench/seed.py, bulk load):", ""]
        for seed in seeds.get(database, []):
            lines.append(f"- {seed['rows']:,} contacts in {seed['seconds']} s")
        lines.append("")
    lines += synchronous_comparison(table)
    return "\n".join(lines)


# The cluster-size series: lookups and new secondaries into one cluster of
# n rows that all hold one phone (bench/cluster.lua), so that the cost of a
# request is seen to grow with its cluster, not with the square of it.
CLUSTER_PHONE = "19990000000"
CLUSTER_WORKLOADS = ("lookup", "secondary")
CLUSTER_BASE_SIZE = 10000
# The series run on each engine once (sqlite-normal measures durability only).
SERIES_DATABASES = {"sqlite", "postgresql"}
FLOOD_REQUESTS = 5000
FLOOD_PHONE = "5550199"
CLUSTER_TARGET_ROWS = 2000
CLUSTER_TARGET_P50_MS = 50.0


@dataclass
class ClusterRun:
    database: str
    rows: int
    workload: str
    repeat: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def seed_cluster(database: Database, rows: int) -> None:
    """Add one customer of `rows` rows to the seeded table: a primary and its
    secondaries, each with its own email, all with CLUSTER_PHONE, older than
    anything the service inserts."""
    start = datetime(2000, 1, 1, tzinfo=UTC)
    values = [
        (
            f"big{j}@cluster.example.com",
            CLUSTER_PHONE,
            "primary" if j == 0 else "secondary",
            start + timedelta(seconds=j),
        )
        for j in range(rows)
    ]
    primary_sql = (
        "INSERT INTO contact (email, phone_number, link_precedence, created_at,"
        " updated_at) VALUES ({0}, {0}, {0}, {0}, {0}) RETURNING id"
    )
    secondary_sql = (
        "INSERT INTO contact (email, phone_number, link_precedence, created_at,"
        " updated_at, linked_id) VALUES ({0}, {0}, {0}, {0}, {0}, {0})"
    )
    if database.kind == "sqlite":
        stamps = [(*row[:3], row[3].strftime("%Y-%m-%d %H:%M:%S.%f")) for row in values]
        with sqlite3.connect(database.path) as connection:
            (primary,) = connection.execute(
                primary_sql.format("?"), (*stamps[0], stamps[0][3])
            ).fetchone()
            connection.executemany(
                secondary_sql.format("?"),
                [(*row, row[3], primary) for row in stamps[1:]],
            )
        return
    with psycopg.connect(database.url) as connection:
        row = connection.execute(
            primary_sql.format("%s"), (*values[0], values[0][3])
        ).fetchone()
        assert row is not None
        with connection.cursor() as cursor:
            cursor.executemany(
                secondary_sql.format("%s"),
                [(*value, value[3], row[0]) for value in values[1:]],
            )


def cluster_series(settings: Settings) -> list[ClusterRun]:
    """For each database and cluster size: seed CLUSTER_BASE_SIZE contacts
    plus the cluster, serve the app, then run each workload of
    bench/cluster.lua `repeats` times (after one unrecorded second)."""
    sizes = [int(n) for n in env_list("BENCH_CLUSTER_ROWS", "1,100,1000,2000,5000")]
    runs: list[ClusterRun] = []
    run_number = 0
    # One client at a time: the time a request into such a cluster takes,
    # not how long it queues behind the others.
    settings = replace(settings, connections=1)
    for kind in SERIES_DATABASES.intersection(settings.databases):
        database = Database(kind, settings)
        for rows in sizes:
            log(f"{kind}, one cluster of {rows:,} rows")
            database.seed(CLUSTER_BASE_SIZE)
            seed_cluster(database, rows)
            service = Server("app:app", settings.port, {"DATABASE_URL": database.url})
            service.start("/health")
            try:
                cluster_wrk(replace(settings, duration=1), service.url, "lookup", 0)
                for workload in CLUSTER_WORKLOADS:
                    for repeat in range(settings.repeats):
                        run_number += 1
                        result = cluster_wrk(
                            settings, service.url, workload, run_number
                        )
                        run = ClusterRun(kind, rows, workload, repeat, **result)
                        runs.append(run)
                        log(
                            f"  {workload:9} #{repeat} {run.rps:8.1f} req/s"
                            f"  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:8.2f} ms"
                            f"  non-2xx {run.non_2xx}  errors {run.socket_errors}"
                        )
            finally:
                service.stop()
    return runs


def cluster_wrk(
    settings: Settings, url: str, workload: str, run_number: int
) -> dict[str, Any]:
    return run_wrk(settings, "cluster.lua", url, [workload, run_number])


@dataclass
class Flood:
    database: str
    requests: int
    first_p50_ms: float
    last_p50_ms: float
    largest_customer_values: int
    emails_with_the_phone: int
    refused: int


def placeholder_flood(settings: Settings) -> list[Flood]:
    """FLOOD_REQUESTS identifies, one after the other, each with a brand-new
    email and the same phone (a shop's own number typed at checkout), on a
    fresh CLUSTER_BASE_SIZE database with the service's default limits; the
    latency of the first and last 500, and the largest customer after."""
    floods = []
    for kind in sorted(SERIES_DATABASES.intersection(settings.databases)):
        database = Database(kind, settings)
        log(f"{kind}, placeholder flood of {FLOOD_REQUESTS:,} requests")
        database.seed(CLUSTER_BASE_SIZE)
        service = Server("app:app", settings.port, {"DATABASE_URL": database.url})
        service.start("/health")
        connection = http.client.HTTPConnection(HOST, settings.port, timeout=30)
        timings = []
        refused = 0
        try:
            for n in range(FLOOD_REQUESTS):
                body = json.dumps(
                    {"email": f"flood{n}@shop.example.com", "phoneNumber": FLOOD_PHONE}
                )
                started = time.perf_counter()
                connection.request(
                    "POST", "/identify", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                answer = json.loads(response.read())
                timings.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise SystemExit(f"flood request {n}: {response.status} {answer}")
                refused += "ignored" in answer
        finally:
            connection.close()
            service.stop()
        largest, emails = flood_counts(database)
        floods.append(
            Flood(
                kind,
                FLOOD_REQUESTS,
                statistics.median(timings[:500]),
                statistics.median(timings[-500:]),
                largest,
                emails,
                refused,
            )
        )
        log(f"  {floods[-1]}")
    return floods


def flood_counts(database: Database) -> tuple[int, int]:
    """(the most emails plus phones any customer holds, the emails in rows
    with FLOOD_PHONE)."""
    largest = (
        "SELECT max(n) FROM (SELECT count(DISTINCT email) + count(DISTINCT"
        " phone_number) AS n FROM contact WHERE deleted_at IS NULL"
        " GROUP BY coalesce(linked_id, id)) AS customers"
    )
    emails = (
        "SELECT count(DISTINCT email) FROM contact"
        f" WHERE phone_number = '{FLOOD_PHONE}' AND deleted_at IS NULL"
    )
    if database.kind == "sqlite":
        with sqlite3.connect(database.path) as connection:
            return (
                connection.execute(largest).fetchone()[0],
                connection.execute(emails).fetchone()[0],
            )
    with psycopg.connect(database.url) as connection:
        found = [connection.execute(sql).fetchone() for sql in (largest, emails)]
        return tuple(int(row[0]) for row in found if row is not None)  # type: ignore[return-value]


def flood_report(floods: list[Flood]) -> list[str]:
    lines = [
        "## Placeholder flood",
        "",
        f"{FLOOD_REQUESTS:,} identifies, one after the other, each with a brand-new"
        f" email and the same phone ({FLOOD_PHONE}, not a built-in placeholder),"
        f" beside {CLUSTER_BASE_SIZE:,} seeded contacts, with the default limits"
        " (MAX_PARTNERS_PER_VALUE 20, MAX_VALUES_PER_CUSTOMER 100).",
        "",
        "| database | p50 of the first 500, ms | p50 of the last 500, ms"
        " | answers with the phone ignored | emails linked to the phone"
        " | largest customer (emails + phones) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for flood in floods:
        lines.append(
            f"| {flood.database} | {flood.first_p50_ms:.1f} | {flood.last_p50_ms:.1f}"
            f" | {flood.refused:,} | {flood.emails_with_the_phone}"
            f" | {flood.largest_customer_values} |"
        )
    lines.append("")
    return lines


def cluster_report(runs: list[ClusterRun]) -> list[str]:
    """The series' table (medians over the repetitions) and its target."""
    lines = [
        "## Cluster size",
        "",
        f"One customer of n rows that all share one phone, beside"
        f" {CLUSTER_BASE_SIZE:,} seeded contacts (bench/cluster.lua): lookup sends"
        " the shared phone alone and is answered with the whole cluster;"
        " secondary sends a brand-new email with it and inserts a row.",
        "",
        "| database | rows in the cluster | workload | req/s | p50 ms | p99 ms"
        " | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((run.database, run.rows, run.workload) for run in runs)
    medians = {}
    for database, rows, workload in keys:
        mine = [
            run
            for run in runs
            if (run.database, run.rows, run.workload) == (database, rows, workload)
        ]
        p50 = statistics.median(run.p50_ms for run in mine)
        medians[database, rows, workload] = p50
        lines.append(
            f"| {database} | {rows:,} | {workload}"
            f" | {statistics.median(run.rps for run in mine):.0f} | {p50:.1f}"
            f" | {statistics.median(run.p99_ms for run in mine):.1f}"
            f" | {sum(run.non_2xx + run.socket_errors for run in mine)} |"
        )
    lines.append("")
    for database in dict.fromkeys(run.database for run in runs):
        p50 = medians.get((database, CLUSTER_TARGET_ROWS, "lookup"))
        if p50 is not None:
            verdict = "met" if p50 < CLUSTER_TARGET_P50_MS else "NOT met"
            lines.append(
                f"- {database}: lookup in a {CLUSTER_TARGET_ROWS:,}-row cluster p50"
                f" < {CLUSTER_TARGET_P50_MS:.0f} ms: {p50:.1f} ms, {verdict}"
            )
    lines.append("")
    return lines


# The large detach: one value taken from a customer of LARGE_ROWS rows that
# all hold one phone, each row with an email of its own (bench/seed.py, whose
# LARGE_PHONE_BASE and LARGE_DOMAIN these are), beside DETACH_BASE_SIZE
# seeded contacts, one request at a time, each on a customer of its own.
LARGE_ROWS = 1000
LARGE_PHONE_BASE = 18_000_000_000
LARGE_DOMAIN = "large.example.com"
DETACH_BASE_SIZE = 1_000_000
DETACH_REPEATS = 5
DETACH_VALUES = ("email", "phone")
DETACH_TARGET_MS = 200.0


@dataclass
class LargeDetach:
    database: str
    target: str
    rows: int
    value: str
    repeat: int
    ms: float
    customers_after: int


def detach_series(settings: Settings) -> list[LargeDetach]:
    """For each database: seed DETACH_BASE_SIZE contacts and enough customers
    of LARGE_ROWS rows, serve the app (and BENCH_BASELINE's, on a customer of
    its own right after each of the service's), then on one connection each
    detach, from a different customer each time, one row's email (the
    customer stays whole) and the phone they all share (it falls apart into
    LARGE_ROWS customers), DETACH_REPEATS times each after one unrecorded
    request of each."""
    detaches = []
    for kind in sorted(SERIES_DATABASES.intersection(settings.databases)):
        database = Database(kind, settings)
        log(f"{kind}, detach from customers of {LARGE_ROWS:,} rows")
        servers = {
            "service": Server("app:app", settings.port, {"DATABASE_URL": database.url})
        }
        if settings.baseline:
            servers["baseline"] = Server(
                "app:app",
                settings.port + 3,
                {"DATABASE_URL": database.url},
                cwd=baseline_tree(settings.baseline),
            )
        customers = len(DETACH_VALUES) * (DETACH_REPEATS + 1) * len(servers)
        seed = database.seed(DETACH_BASE_SIZE, customers, LARGE_ROWS)
        log(f"  seeded {seed}")
        connections = {}
        large = enumerate(seed["large_primary_ids"])
        try:
            for target, server in servers.items():
                server.start("/health")
                connections[target] = http.client.HTTPConnection(
                    HOST, server.port, timeout=60
                )
            for repeat in range(-1, DETACH_REPEATS):
                for value in DETACH_VALUES:
                    for target, connection in connections.items():
                        index, primary_id = next(large)
                        ms, after = detach_large(connection, index, primary_id, value)
                        if repeat < 0:
                            continue
                        detaches.append(
                            LargeDetach(
                                kind, target, LARGE_ROWS, value, repeat, ms, after
                            )
                        )
                        log(
                            f"  {value:5} #{repeat} {target:8} {ms:8.1f} ms,"
                            f" {after:,} customers"
                        )
        finally:
            for connection in connections.values():
                connection.close()
            for server in servers.values():
                server.stop()
    return detaches


def detach_large(
    connection: http.client.HTTPConnection, index: int, primary_id: int, value: str
) -> tuple[float, int]:
    """Detach `value` (email: the email of the customer's middle row; phone:
    the phone all its rows hold) from the `index`th large customer; return
    the milliseconds it took and the customers in the answer."""
    if value == "email":
        body = {"email": f"b{index}e{LARGE_ROWS // 2}@{LARGE_DOMAIN}"}
    else:
        body = {"phoneNumber": str(LARGE_PHONE_BASE + index)}
    started = time.perf_counter()
    connection.request(
        "POST",
        f"/customers/{primary_id}/detach",
        json.dumps(body),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    ms = (time.perf_counter() - started) * 1000
    expected = 1 if value == "email" else LARGE_ROWS
    if response.status != 200 or len(answer["contacts"]) != expected:
        raise SystemExit(
            f"detach of the {value} of customer {primary_id}: {response.status},"
            f" {len(answer.get('contacts', []))} customers, not {expected}"
        )
    return ms, expected


def detach_report(detaches: list[LargeDetach]) -> list[str]:
    """The series' table (p50 and max of the requests of each database and
    value) and its target."""
    lines = [
        f"## Detach from a {LARGE_ROWS:,}-row customer",
        "",
        f"Customers of {LARGE_ROWS:,} rows that all hold one phone, each row with"
        f" an email of its own, beside {DETACH_BASE_SIZE:,} seeded contacts"
        " (bench/seed.py; the ledger holds each customer's"
        f" {LARGE_ROWS:,} events, written by the migration as for every seeded"
        " row). One request at a time on one connection, each on a customer of"
        " its own, after one unrecorded request of each kind (with BENCH_BASELINE,"
        " that revision served beside the service, each of its requests right"
        " after the service's on a customer of its own):",
        "",
        "- email: the email of one row; the row keeps the phone and the customer"
        " stays whole: one row updated, the email nulled in one event, one event"
        " added, the whole customer in the answer",
        f"- phone: the phone every row holds; each row keeps only its email and"
        f" the customer falls apart into {LARGE_ROWS:,}: every row updated, the"
        f" phone nulled in {LARGE_ROWS:,} events, {LARGE_ROWS + 1:,} events"
        f" added, {LARGE_ROWS:,} customers in the answer",
        "",
        "| database | value detached | served by | requests | p50 ms | max ms"
        " | customers after |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    keys = dict.fromkeys((d.database, d.value, d.target) for d in detaches)
    for database, value, target in keys:
        mine = [
            d
            for d in detaches
            if (d.database, d.value, d.target) == (database, value, target)
        ]
        slowest = max(d.ms for d in mine)
        lines.append(
            f"| {database} | {value} | {target} | {len(mine)}"
            f" | {statistics.median(d.ms for d in mine):.1f} | {slowest:.1f}"
            f" | {mine[0].customers_after:,} |"
        )
        if target != "service":
            continue
        verdict = "met" if slowest < DETACH_TARGET_MS else "NOT met"
        verdicts.append(
            f"- {database}: detach of the {value} from a {LARGE_ROWS:,}-row"
            f" customer < {DETACH_TARGET_MS:.0f} ms (the slowest request):"
            f" {slowest:.1f} ms, {verdict}"
        )
    return [*lines, "", *verdicts, ""]


def main() -> None:
    settings = Settings.from_env()
    series = env_list("BENCH_SERIES", "matrix,cluster,flood,detach")
    started = datetime.now(UTC)
    runs: list[Run] = []
    seeds: dict[str, list[dict[str, Any]]] = {}
    (BENCH / ".data").mkdir(exist_ok=True)
    if "matrix" in series:
        floor = Server("bench.floor:app", settings.port + 1, {})
        floor.start("/identify")
        try:
            for kind in settings.databases:
                database = Database(kind, settings)
                for size in settings.sizes:
                    log(f"{kind}, {size:,} contacts")
                    measured, seeded = measure(settings, database, size, floor)
                    runs += measured
                    seeds.setdefault(kind, []).append(seeded[0])
        finally:
            floor.stop()
    cluster_runs = cluster_series(settings) if "cluster" in series else []
    floods = placeholder_flood(settings) if "flood" in series else []
    detaches = detach_series(settings) if "detach" in series else []
    minutes = (datetime.now(UTC) - started).total_seconds() / 60
    table = summarise(runs)
    text = (
        report(settings, table, seeds, started, minutes) if runs else "# Benchmarks\n"
    )
    if cluster_runs:
        text += "\n" + "\n".join(cluster_report(cluster_runs))
    if floods:
        text += "\n" + "\n".join(flood_report(floods))
    if detaches:
        text += "\n" + "\n".join(detach_report(detaches))
    records = [asdict(run) for run in [*runs, *cluster_runs, *floods, *detaches]]
    write(settings, text, records)
    if any(row["non_2xx"] or row["socket_errors"] for row in table) or any(
        run.non_2xx or run.socket_errors for run in cluster_runs
    ):
        raise SystemExit("some requests failed: see non-2xx in the report")


def write(settings: Settings, text: str, records: list[dict[str, Any]]) -> None:
    """Write the report to BENCH_OUT and the runs beside it as .json; with
    BENCH_KEEP, the report those files held goes below the new one and its
    runs before the new ones."""
    out, runs = settings.out, settings.out.with_suffix(".json")
    if settings.keep and out.exists():
        text += (
            "\n---\n\nThe report below was in this file before the run above"
            " (BENCH_KEEP=1), and is kept as it was.\n\n" + out.read_text()
        )
    if settings.keep and runs.exists():
        records = [*json.loads(runs.read_text()), *records]
    out.write_text(text)
    runs.write_text(json.dumps(records, indent=1) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
