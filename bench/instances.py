"""Scale-out on PostgreSQL: BENCH_INSTANCES services (each of the service's
workers, on ports of their own) on one database, loaded at once by one wrk
each with an equal share of the connections, beside the one service under
all of them, on the writes. The instances' numbers are their sums; their
p50 and p99 are the largest of theirs, a bound on the combined ones."""

from dataclasses import replace
from typing import Any

from harness import Settings, start_wrk, wrk_result

WORKLOADS = ("secondary", "primary", "merge")


def measured(settings: Settings, engine: str, workload: str) -> int:
    """How many instances `workload` is run on at once beside the service
    (0: none)."""
    if engine != "postgresql" or settings.instances < 2 or workload not in WORKLOADS:
        return 0
    return settings.instances


def check(settings: Settings) -> None:
    """Stop before anything runs when a connection count cannot be shared
    equally between the instances."""
    if "postgresql" not in settings.databases or settings.instances < 2:
        return
    for count in settings.connection_counts:
        if count % settings.instances:
            raise SystemExit(
                f"BENCH_CONNECTIONS {count} is not a multiple of"
                f" BENCH_INSTANCES {settings.instances}"
            )


def load_together(
    settings: Settings, urls: list[str], script_args: list[list[Any]]
) -> dict[str, Any]:
    """Run wrk with bench/identify.lua against each of `urls` at once, each
    with its share of settings.connections and its own arguments, and sum
    what they served."""
    share = replace(settings, connections=settings.connections // len(urls))
    processes = [
        start_wrk(share, "identify.lua", url, arguments)
        for url, arguments in zip(urls, script_args, strict=True)
    ]
    results = [wrk_result(process) for process in processes]
    combined = {
        name: sum(result[name] for result in results)
        for name in (
            "requests",
            "rps",
            "non_2xx",
            "socket_errors",
            "stopped_threads",
            "merge_fallbacks",
        )
    }
    for name in ("seconds", "p50_ms", "p99_ms"):
        combined[name] = max(result[name] for result in results)
    return combined


def table(rows: list[dict[str, Any]], instances: int) -> list[str]:
    rows = [row for row in rows if row["instances_rps"] is not None]
    if not rows:
        return []
    lines = [
        f"{instances} instances of the service on this database, each with the"
        f" same workers on a port of its own, loaded at once by {instances} wrk"
        " (each with an equal share of the connections; req/s summed, p99 the"
        " largest of theirs), each run right after the one instance; ratios"
        " are medians of the per-repetition ratios:",
        "",
        f"| contacts | connections | workload | 1 instance req/s"
        f" | {instances} instances req/s | {instances} ÷ 1"
        f" | {instances} instances p99 ms | non-2xx | Δrows/req"
        " | Δprimaries/req |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']:,} | {row['connections']} | {row['workload']}"
            f" | {row['rps']:.0f} | {row['instances_rps']:.0f}"
            f" | {row['instances_share']:.2f} | {row['instances_p99_ms']:.1f}"
            f" | {row['instances_failed']}"
            f" | {row['instances_rows_per_request']:+.2f}"
            f" | {row['instances_primaries_per_request']:+.2f} |"
        )
    return [*lines, ""]


def targets(rows: list[dict[str, Any]], size: int, instances: int) -> list[str]:
    """At `size` contacts, every count and write: the instances together
    serve at least the req/s of one."""
    return [
        f"- {row['workload']} at {row['connections']} connections: {instances}"
        f" instances >= 1 in req/s: {row['instances_rps']:.0f} against"
        f" {row['rps']:.0f}, x{row['instances_share']:.2f},"
        f" {'met' if row['instances_share'] >= 1.0 else 'NOT met'}"
        for row in rows
        if row["size"] == size and row["instances_rps"] is not None
    ]
