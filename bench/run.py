"""Measure the series of bench/registry.py and write BENCHMARKS.md from them.

The matrix (bench/matrix.py) measures POST /identify and the other workloads
against a bare Flask floor. For each database and size: seed
(bench/seed.py), serve the app exactly as production does (migrations
applied, gunicorn with gunicorn.conf.py) and the floor (bench/floor.py)
under the same settings, then for each repetition, workload and connection
count run wrk against the floor and then against the service, so that each
service number has a floor number measured next to it. Lookups and writes
are also run against the references (bench/reference.py: one SELECT, one
INSERT and COMMIT) after the service, served as a user serves a plain app
(the yardstick, gunicorn's defaults) and under gunicorn.conf.py
(bench/references.py); on PostgreSQL the writes are run on BENCH_INSTANCES
services at once too (bench/instances.py). Medians are reported.

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
  BENCH_OUT         BENCHMARKS.md       the report; the history of every run beside
                                        it as .json, the charts in bench/charts/
  BENCH_SERIES      every series of bench/registry.py (matrix,cluster,
                                        flood,detach,graph,webhooks,import): the
                                        matrix above, the cluster-size series
                                        (cluster_series),
                                        the placeholder flood (placeholder_flood),
                                        the large detach (detach_series), the
                                        graph of a customer (bench/graph_series.py),
                                        the webhook worker (delivery_bench.py) and
                                        the import and export, beside the same
                                        lines through /identify (imports.py)
  BENCH_CLUSTER_ROWS 1,100,1000,2000,5000  rows of the one cluster of that series
  BENCH_IMPORT_LINES 1000000            order lines of the import series
  BENCH_IMPORT_SEEDED 1000000           contacts seeded before its second import
  BENCH_IMPORT_MEMORY_LINES 5000000     order lines imported into an empty SQLite
                                        database last, for its peak memory (0: skipped)
Only ever loads 127.0.0.1.

Each series measured appends an entry to the history (BENCH_OUT's .json);
the report is then rewritten from the latest entry of every series, so a
series not run keeps its section as last measured. `python bench/run.py
--report-only` rewrites the report and its charts from the history without
measuring.
"""

import sys
from datetime import UTC, datetime

import instances
from harness import BENCH, Settings, env_list, log
from registry import NAMES, SERIES, entry, load, save, write
from report import commit


def main() -> None:
    settings = Settings.from_env()
    history = settings.out.with_suffix(".json")
    entries = load(history)
    if "--report-only" in sys.argv[1:]:
        write(settings.out, entries)
        log(f"wrote {settings.out} from {history}")
        return
    instances.check(settings)
    chosen = env_list("BENCH_SERIES", NAMES)
    unknown = set(chosen).difference(series.name for series in SERIES)
    if unknown:
        raise SystemExit(f"BENCH_SERIES: no series {', '.join(sorted(unknown))}")
    (BENCH / ".data").mkdir(exist_ok=True)
    # Made before measuring: a history that cannot be saved would lose the run.
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    measured = commit()
    failed = []
    for series in SERIES:
        if series.name not in chosen:
            continue
        started = datetime.now(UTC)
        result = series.run(settings)
        minutes = (datetime.now(UTC) - started).total_seconds() / 60
        entries.append(entry(series, settings, result, measured, started, minutes))
        save(history, entries)
        if series.failed(entries[-1]):
            failed.append(series.name)
    write(settings.out, entries)
    log(f"wrote {settings.out}")
    if failed:
        raise SystemExit(
            f"some requests failed in {', '.join(failed)}: see non-2xx in the report"
        )


if __name__ == "__main__":
    main()
