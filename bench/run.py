"""Benchmark POST /identify against a bare Flask floor and write BENCHMARKS.md.

For each database and size: seed (bench/seed.py), serve the app exactly as
production does (migrations applied, gunicorn with gunicorn.conf.py) and the
floor (bench/floor.py) under the same settings, then for each repetition,
workload and connection count run wrk against the floor and then against the
service, so that each service number has a floor number measured next to it.
Lookups and writes are also run against the references (bench/reference.py:
one SELECT, one INSERT and COMMIT) after the service, served as a user
serves a plain app (the yardstick, gunicorn's defaults) and under
gunicorn.conf.py (bench/references.py); on PostgreSQL the writes are run on
BENCH_INSTANCES services at once too (bench/instances.py). Medians are
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
  BENCH_CONNECTIONS 8                   wrk connections, or a list (8,32): every
                                        workload at each (BENCH_THREADS 1 wrk thread)
  BENCH_WORKERS     2                   gunicorn workers of every server (the
                                        service's WEB_CONCURRENCY, the yardstick's -w)
  BENCH_INSTANCES   2                   services on one PostgreSQL database loaded at
                                        once, each with its share of the connections,
                                        on the writes beside one (1: not measured)
  BENCH_RESEED_MAX  100000              reseed before every repetition up to this size
  BENCH_PG_URL      postgresql://postgres@127.0.0.1/bench
  BENCH_PORT        28001               the service; then floor, reference, baseline,
                                        yardstick and the other instances
  BENCH_OUT         BENCHMARKS.md       the report; every run goes beside it as .json
  BENCH_KEEP        unset               when 1, the report already in BENCH_OUT is
                                        kept below the new one, and its runs in the
                                        .json before the new ones
  BENCH_SERIES      matrix,cluster,flood,detach,graph,webhooks,import  what to
                                        run: the matrix above, the cluster-size
                                        series (cluster_series), the placeholder
                                        flood (placeholder_flood), the large detach
                                        (detach_series), the graph of a customer
                                        (bench/graph_series.py), the webhook
                                        delivery worker (bench/delivery_bench.py)
                                        and the import and export of an order
                                        history (imports.py)
  BENCH_HOOK_RATE   300                 identify/s beside the webhook worker
  BENCH_CLUSTER_ROWS 1,100,1000,2000,5000  rows of the one cluster of that series
  BENCH_IMPORT_LINES 1000000            order lines of the import series
  BENCH_IMPORT_SEEDED 1000000           contacts seeded before its second import
Only ever loads 127.0.0.1.
"""

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import instances
from delivery_bench import webhook_report, webhook_series
from graph_series import graph_report, graph_series
from harness import BENCH, Database, Server, Settings, env_list, log
from imports import import_report, import_series
from matrix import Run, measure, summarise
from report import report
from series import (
    cluster_report,
    cluster_series,
    detach_report,
    detach_series,
    flood_report,
    placeholder_flood,
)


def main() -> None:
    settings = Settings.from_env()
    instances.check(settings)
    series = env_list(
        "BENCH_SERIES", "matrix,cluster,flood,detach,graph,webhooks,import"
    )
    started = datetime.now(UTC)
    runs: list[Run] = []
    seeds: dict[str, list[dict[str, Any]]] = {}
    (BENCH / ".data").mkdir(exist_ok=True)
    if "matrix" in series:
        floor = Server(
            "bench.floor:app", settings.port + 1, {}, workers=settings.workers
        )
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
    graphs = graph_series(settings) if "graph" in series else []
    hooks = webhook_series(settings) if "webhooks" in series else []
    imports = import_series(settings) if "import" in series else []
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
    if graphs:
        text += "\n" + "\n".join(graph_report(graphs))
    if hooks:
        text += "\n" + "\n".join(webhook_report(hooks))
    if imports:
        text += "\n" + "\n".join(import_report(imports))
    records = [
        asdict(run)
        for run in [
            *runs,
            *cluster_runs,
            *floods,
            *detaches,
            *graphs,
            *hooks,
            *imports,
        ]
    ]
    write(settings, text, records)
    if any(row["non_2xx"] or row["socket_errors"] for row in table) or any(
        run.non_2xx or run.socket_errors for run in [*cluster_runs, *graphs]
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
