"""The series beside the matrix: the cluster size, the placeholder flood and
the large detach, each with its report."""

import http.client
import json
import sqlite3
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from harness import (
    HOST,
    Database,
    Settings,
    app_server,
    env_list,
    log,
    medians,
    run_wrk,
    wrk_cells,
)

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
            database.add_customer(
                [(f"big{j}@cluster.example.com", CLUSTER_PHONE) for j in range(rows)]
            )
            service = app_server(settings, database)
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
        service = app_server(settings, database)
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
        f"One customer of n rows that all share one phone, beside"
        f" {CLUSTER_BASE_SIZE:,} seeded contacts (bench/cluster.lua): lookup sends"
        " the shared phone alone and is answered with the whole cluster;"
        " secondary sends a brand-new email with it and inserts a row.",
        "",
        "| database | rows in the cluster | workload | req/s | p50 ms | p99 ms"
        " | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]

    def key(run: ClusterRun) -> tuple[str, int, str]:
        return run.database, run.rows, run.workload

    for (database, rows, workload), cells in wrk_cells(runs, key).items():
        lines.append(f"| {database} | {rows:,} | {workload}{cells}")
    p50 = medians(runs, key, "p50_ms")
    lines.append("")
    for database in dict.fromkeys(run.database for run in runs):
        ms = p50.get((database, CLUSTER_TARGET_ROWS, "lookup"))
        if ms is not None:
            verdict = "met" if ms < CLUSTER_TARGET_P50_MS else "NOT met"
            lines.append(
                f"- {database}: lookup in a {CLUSTER_TARGET_ROWS:,}-row cluster p50"
                f" < {CLUSTER_TARGET_P50_MS:.0f} ms: {ms:.1f} ms, {verdict}"
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
        servers = {"service": app_server(settings, database)}
        if settings.baseline:
            servers["baseline"] = app_server(
                settings, database, settings.port + 3, baseline=True
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
