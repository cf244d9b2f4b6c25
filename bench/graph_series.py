"""The graph series: GET /customers/{id}/graph of one customer of 100 values
beside CLUSTER_BASE_SIZE seeded contacts, against the yardstick (one indexed
SELECT in a plain app under gunicorn's defaults, bench/references.py)."""

import statistics
from dataclasses import dataclass, replace

from harness import Database, Settings, app_server, log, run_wrk, wrk_cells
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


def graph_series(settings: Settings) -> list[GraphRun]:
    """For each database: seed, serve the app and the yardstick, then
    `repeats` times the graph on the service and the SELECT on the yardstick,
    one after the other (after one unrecorded second of each)."""
    runs: list[GraphRun] = []
    for kind in sorted(SERIES_DATABASES.intersection(settings.databases)):
        database = Database(kind, settings)
        log(f"{kind}, the graph of a customer of {GRAPH_VALUES} values")
        database.seed(CLUSTER_BASE_SIZE)
        primary = database.add_customer(chain())
        service = app_server(settings, database)
        stick = yardstick(settings, settings.port + 4, {"DATABASE_URL": database.url})
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
    cells = wrk_cells(runs, lambda run: (run.database, run.target))
    for database in dict.fromkeys(run.database for run in runs):
        for target in ("service", "yardstick"):
            lines.append(f"| {database} | {target}{cells[database, target]}")
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
