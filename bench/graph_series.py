"""The graph series: GET /customers/{id}/graph of one customer of 100 values
beside CLUSTER_BASE_SIZE seeded contacts, against the yardstick (one indexed
SELECT in a plain app under gunicorn's defaults, bench/references.py)."""

import sqlite3
import statistics
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import psycopg
from harness import Database, Server, Settings, log, run_wrk
from references import yardstick
from series import CLUSTER_BASE_SIZE, SERIES_DATABASES

# 50 emails and 50 phones in 99 rows, a chain: row 2n-1 holds email n and
# phone n-1, row 2n email n and phone n; each inner value is a bridge.
GRAPH_VALUES = 100
GRAPH_DOMAIN = "graph.example.com"
GRAPH_PHONE_BASE = 17_000_000_000
GRAPH_TARGET_SHARE = 0.2


@dataclass
class GraphRun:
    database: str
    target: str
    repeat: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def chain() -> list[tuple[str, str]]:
    """The (email, phone) of each row of the series' customer, oldest first."""
    pairs = GRAPH_VALUES // 2
    email = [f"g{n}@{GRAPH_DOMAIN}" for n in range(pairs)]
    phone = [str(GRAPH_PHONE_BASE + n) for n in range(pairs)]
    rows = [(email[0], phone[0])]
    for n in range(1, pairs):
        rows += [(email[n], phone[n - 1]), (email[n], phone[n])]
    return rows


def seed_customer(database: Database) -> int:
    """Add the series' customer to the seeded table; its primary's id."""
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [
        (email, phone, "primary" if n == 0 else "secondary", start + timedelta(0, n))
        for n, (email, phone) in enumerate(chain())
    ]
    columns = "email, phone_number, link_precedence, created_at, updated_at"
    primary_sql = (
        f"INSERT INTO contact ({columns}) VALUES ({{0}}, {{0}}, {{0}}, {{0}}, {{0}})"
        " RETURNING id"
    )
    secondary_sql = (
        f"INSERT INTO contact ({columns}, linked_id)"
        " VALUES ({0}, {0}, {0}, {0}, {0}, {0})"
    )
    if database.kind == "sqlite":
        stamped = [(*row[:3], row[3].strftime("%Y-%m-%d %H:%M:%S.%f")) for row in rows]
        with sqlite3.connect(database.path) as connection:
            (primary,) = connection.execute(
                primary_sql.format("?"), (*stamped[0], stamped[0][3])
            ).fetchone()
            connection.executemany(
                secondary_sql.format("?"),
                [(*row, row[3], primary) for row in stamped[1:]],
            )
        return int(primary)
    with psycopg.connect(database.url) as connection:
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


def graph_series(settings: Settings) -> list[GraphRun]:
    """For each database: seed, serve the app and the yardstick, then
    `repeats` times the graph on the service and the SELECT on the yardstick,
    one after the other (after one unrecorded second of each)."""
    runs: list[GraphRun] = []
    for kind in sorted(SERIES_DATABASES.intersection(settings.databases)):
        database = Database(kind, settings)
        log(f"{kind}, the graph of a customer of {GRAPH_VALUES} values")
        database.seed(CLUSTER_BASE_SIZE)
        primary = seed_customer(database)
        env = {"DATABASE_URL": database.url}
        service = Server("app:app", settings.port, env, workers=settings.workers)
        stick = yardstick(settings, settings.port + 4, env)
        loads = {
            "service": (service, ["GET", f"/customers/{primary}/graph"]),
            "yardstick": (stick, ["POST", "/select", f"g0@{GRAPH_DOMAIN}"]),
        }
        service.start("/health")
        stick.start("/select")
        try:
            for repeat in range(-1, settings.repeats):
                for target, (server, arguments) in loads.items():
                    short = settings if repeat >= 0 else replace(settings, duration=1)
                    result = run_wrk(short, "graph.lua", server.url, arguments)
                    if repeat < 0:
                        continue
                    run = GraphRun(kind, target, repeat, **result)
                    runs.append(run)
                    log(
                        f"  {target:9} #{repeat} {run.rps:8.1f} req/s"
                        f"  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:8.2f} ms"
                        f"  non-2xx {run.non_2xx}"
                    )
        finally:
            service.stop()
            stick.stop()
    return runs


def graph_report(runs: list[GraphRun]) -> list[str]:
    """The series' table (medians over the repetitions) and its target."""
    lines = [
        "## The graph of a customer",
        "",
        f"GET /customers/{{id}}/graph of one customer of {GRAPH_VALUES} values"
        f" (50 emails and 50 phones in 99 rows, a chain: every inner value is a"
        f" bridge) beside {CLUSTER_BASE_SIZE:,} seeded contacts, against the"
        " yardstick (one indexed SELECT in a plain app under gunicorn's"
        " defaults), each run after the other in every repetition; the ratio is"
        " the median of the per-repetition ratios:",
        "",
        "| database | served by | req/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---:|---:|---:|---:|",
    ]
    shares = []
    for database in dict.fromkeys(run.database for run in runs):
        medians = {}
        for target in ("service", "yardstick"):
            mine = [r for r in runs if (r.database, r.target) == (database, target)]
            medians[target] = statistics.median(r.rps for r in mine)
            lines.append(
                f"| {database} | {target} | {medians[target]:.0f}"
                f" | {statistics.median(r.p50_ms for r in mine):.1f}"
                f" | {statistics.median(r.p99_ms for r in mine):.1f}"
                f" | {sum(r.non_2xx + r.socket_errors for r in mine)} |"
            )
        share = statistics.median(
            service.rps / stick.rps
            for service in runs
            for stick in runs
            if service.database == stick.database == database
            and (service.target, stick.target) == ("service", "yardstick")
            and service.repeat == stick.repeat
        )
        verdict = "met" if share >= GRAPH_TARGET_SHARE else "NOT met"
        shares.append(
            f"- {database}: the graph >= {GRAPH_TARGET_SHARE} x the yardstick:"
            f" x{share:.2f}, {verdict}"
        )
    return [*lines, "", *shares, ""]
