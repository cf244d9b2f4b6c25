"""What every measurement of the bench shares: the workloads it knows, the
settings read from the environment, the databases it seeds and reads back,
the servers it starts, wrk, what a series' run returns (Measured) and the
medians its tables and charts show."""

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
class Measured:
    """What a series' run returns: its records (dataclasses) and the facts
    of the run that its section needs beside them (the matrix's seedings)."""

    records: list[Any]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    databases: list[str]
    sizes: list[int]
    workloads: list[str]
    duration: int
    repeats: int
    # What wrk opens; the matrix runs each workload at every count of
    # connection_counts, the first of which is `connections`.
    connections: int
    connection_counts: list[int]
    threads: int
    workers: int
    instances: int
    reseed_max: int
    pg_url: str
    port: int
    out: Path
    baseline: str | None

    @classmethod
    def from_env(cls) -> "Settings":
        counts = [int(n) for n in env_list("BENCH_CONNECTIONS", "8")]
        return cls(
            databases=env_list("BENCH_DATABASES", "sqlite,sqlite-normal,postgresql"),
            sizes=[int(size) for size in env_list("BENCH_SIZES", "10000,1000000")],
            workloads=env_list("BENCH_WORKLOADS", ",".join(WORKLOADS)),
            duration=int(env("BENCH_DURATION", "10")),
            repeats=int(env("BENCH_REPEATS", "3")),
            connections=counts[0],
            connection_counts=counts,
            # One thread: when merges run out of pairs it stops every connection
            # at once. With two, the first to stop left connections open that
            # held gunicorn workers in their 2 s graceful close, stalling the
            # other thread's last requests (10k merges: p99 1.6 s, 400 req/s).
            threads=int(env("BENCH_THREADS", "1")),
            workers=int(env("BENCH_WORKERS", "2")),
            instances=int(env("BENCH_INSTANCES", "2")),
            reseed_max=int(env("BENCH_RESEED_MAX", "100000")),
            pg_url=env("BENCH_PG_URL", "postgresql://postgres@127.0.0.1/bench"),
            port=int(env("BENCH_PORT", "28001")),
            out=ROOT / env("BENCH_OUT", "BENCHMARKS.md"),
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

    def add_customer(self, values: list[tuple[str, str]]) -> int:
        """Add one customer to the seeded table, its rows holding `values`
        ((email, phone), oldest first): a primary and its secondaries, each a
        second apart in 2000, older than anything the service inserts. Its
        primary's id."""
        start = datetime(2000, 1, 1, tzinfo=UTC)
        rows = [
            (email, phone, "secondary" if n else "primary", start + timedelta(0, n))
            for n, (email, phone) in enumerate(values)
        ]
        columns = "email, phone_number, link_precedence, created_at, updated_at"
        primary_sql = (
            f"INSERT INTO contact ({columns})"
            " VALUES ({0}, {0}, {0}, {0}, {0}) RETURNING id"
        )
        secondary_sql = (
            f"INSERT INTO contact ({columns}, linked_id)"
            " VALUES ({0}, {0}, {0}, {0}, {0}, {0})"
        )
        if self.engine == "sqlite":
            stamped = [(*row[:3], f"{row[3]:%Y-%m-%d %H:%M:%S.%f}") for row in rows]
            with sqlite3.connect(self.path) as connection:
                (primary,) = connection.execute(
                    primary_sql.format("?"), (*stamped[0], stamped[0][3])
                ).fetchone()
                connection.executemany(
                    secondary_sql.format("?"),
                    [(*row, row[3], primary) for row in stamped[1:]],
                )
            return int(primary)
        with psycopg.connect(self.url) as connection:
            found = connection.execute(
                primary_sql.format("%s"), (*rows[0], rows[0][3])
            ).fetchone()
            assert found is not None
            with connection.cursor() as cursor:
                cursor.executemany(
                    secondary_sql.format("%s"),
                    [(*row, row[3], found[0]) for row in rows[1:]],
                )
            return int(found[0])

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
    """A gunicorn started as production starts it: gunicorn.conf.py, its env,
    `workers` workers (WEB_CONCURRENCY); or by `command`, run in `cwd`."""

    def __init__(
        self,
        target: str,
        port: int,
        extra_env: dict[str, str],
        *,
        workers: int,
        cwd: Path = ROOT,
        command: list[str] | None = None,
    ) -> None:
        self.target = target
        self.cwd = cwd
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.env = {
            **os.environ,
            **extra_env,
            "HOST": HOST,
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
        }
        self.command = command or [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            target,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str) -> None:
        log = open(BENCH / ".data" / f"gunicorn-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command,
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


def run_wrk(
    settings: Settings, script: str, url: str, script_args: list[Any]
) -> dict[str, Any]:
    """Run wrk with a script of bench/ and return the JSON of its RESULT line."""
    return wrk_result(start_wrk(settings, script, url, script_args))


def start_wrk(
    settings: Settings, script: str, url: str, script_args: list[Any]
) -> subprocess.Popen[str]:
    """Start wrk with a script of bench/, its output piped for wrk_result."""
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
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wrk_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a wrk of start_wrk and return the JSON of its RESULT line."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]
    raise SystemExit(f"wrk printed no result:\n{stdout}\n{stderr}")


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


def app_server(
    settings: Settings,
    database: Database,
    port: int | None = None,
    baseline: bool = False,
) -> Server:
    """The service on `database` (with the settings it runs it with), on
    `port` (BENCH_PORT unless given); with `baseline`, BENCH_BASELINE's
    revision of it, from its worktree."""
    return Server(
        "app:app",
        settings.port if port is None else port,
        {"DATABASE_URL": database.url, **database.env},
        workers=settings.workers,
        cwd=baseline_tree(settings.baseline)
        if baseline and settings.baseline
        else ROOT,
    )


def medians(
    runs: Iterable[Any], key: Callable[[Any], tuple[Any, ...]], field: str
) -> dict[tuple[Any, ...], float]:
    """The median of `field` over the runs of each key, in first-seen order."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(getattr(run, field))
    return {group: statistics.median(values) for group, values in groups.items()}


def wrk_cells(
    runs: list[Any], key: Callable[[Any], tuple[Any, ...]]
) -> dict[tuple[Any, ...], str]:
    """The last cells of a table row of each key's wrk runs: the medians of
    req/s, p50 and p99, and the failed requests of them all."""
    rps, p50, p99 = (medians(runs, key, f) for f in ("rps", "p50_ms", "p99_ms"))
    return {
        group: f" | {rps[group]:.0f} | {p50[group]:.1f} | {p99[group]:.1f}"
        f" | {sum(r.non_2xx + r.socket_errors for r in runs if key(r) == group)} |"
        for group in rps
    }


def log(message: str) -> None:
    print(message, flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def gunicorn_settings(settings: Settings) -> str:
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
        env={
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(BENCH / ".data"),
            "WEB_CONCURRENCY": str(settings.workers),
        },
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    workers, threads, worker_class, keepalive = json.loads(output)
    return (
        f"gunicorn.conf.py: {workers} workers (BENCH_WORKERS, as WEB_CONCURRENCY)"
        f" x {threads} threads"
        f" (WEB_THREADS), worker class {worker_class} (gthread; keep-alive"
        f" {keepalive} s)"
    )
