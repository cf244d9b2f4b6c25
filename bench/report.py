"""The matrix's report: the setting it ran in, its tables and its targets."""

import os
import platform
from pathlib import Path
from typing import Any

import instances
import references
from harness import DESCRIPTIONS, Settings, git
from matrix import Run, summarise

# Targets at the largest size: ratio to the floor, p99 in ms.
RATIO_TARGETS = {
    "sqlite": {"lookup": 0.55, "secondary": 0.28, "primary": 0.28, "merge": 0.20},
    "postgresql": {"lookup": 0.45},
}
FLATNESS_TARGET = 0.9
# Issue 10: writes keep 0.9 of the baseline's throughput; a history read
# reaches 0.3 of the floor; /customers/lookup is as fast as an identify
# lookup. The targets against one database operation (with their p99) are
# references.TARGETS, those of several instances instances.py's.
BASELINE_TARGET = {"secondary": 0.9, "primary": 0.9, "merge": 0.9}
HISTORY_TARGET = 0.3


def targets(
    settings: Settings, table: list[dict[str, Any]], database: str
) -> list[str]:
    """One line per performance target, measured against the largest and
    smallest sizes of this database, at the first connection count unless
    said."""
    everything = [row for row in table if row["database"] == database]
    rows = [row for row in everything if row["connections"] == settings.connections]
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
        if row is not None and row["baseline_share"] is not None:
            share = row["baseline_share"]
            lines.append(
                f"- {workload} req/s >= {target} x baseline: x{share:.2f},"
                f" {verdict(share >= target)}"
            )
    lines += references.targets(everything, large, settings.connections)
    lines += instances.targets(everything, large, settings.instances)
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

    def key(row: dict[str, Any]) -> tuple[int, str, int]:
        return row["size"], row["workload"], row["connections"]

    full = {key(row): row for row in table if row["database"] == "sqlite"}
    pairs = [
        (full[key(row)], row)
        for row in table
        if row["database"] == "sqlite-normal" and key(row) in full
    ]
    if not pairs:
        return []
    lines = [
        "### SQLite: synchronous=FULL (default) against NORMAL",
        "",
        "FULL syncs every commit to disk before answering, so an acknowledged"
        " write survives an OS crash or power loss; NORMAL may lose the last"
        " ones (SQLITE_SYNCHRONOUS=NORMAL).",
        "",
        "| contacts | connections | workload | FULL req/s | NORMAL req/s"
        " | FULL ÷ NORMAL | FULL p99 ms | NORMAL p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for full_row, normal_row in pairs:
        lines.append(
            f"| {full_row['size']:,} | {full_row['connections']}"
            f" | {full_row['workload']}"
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


def settings_of(entry: Any) -> Settings:
    return Settings(**{**entry.settings, "out": Path(entry.settings["out"])})


HEADLINE = {
    "lookup": "lookup",
    "secondary": "new secondary",
    "primary": "new primary",
    "merge": "merge",
}


def headline(entry: Any) -> list[str]:
    """The identify workloads on each engine at the largest size and the
    first connection count: req/s as a share of the yardstick's, and p99."""
    settings = settings_of(entry)
    table = summarise([Run(**record) for record in entry.records])
    cells = {
        (row["database"], row["workload"]): row
        for row in table
        if row["connections"] == settings.connections
        and row["size"] == max(settings.sizes)
        and row["yardstick_share"] is not None
    }
    engines = list(dict.fromkeys(database for database, _ in cells))
    if not engines:
        return []
    lines = [
        f"Identify at {max(settings.sizes):,} contacts and"
        f" {settings.connections} connections (matrix, commit {entry.commit}):"
        " req/s as a share of the yardstick's (one SELECT or one INSERT and"
        " COMMIT in a plain app under gunicorn's defaults), and p99:",
        "",
        "| engine | " + " | ".join(HEADLINE.values()) + " |",
        "|---|" + "---:|" * len(HEADLINE),
    ]
    for engine in engines:
        row = [
            f"x{cell['yardstick_share']:.2f}, p99 {cell['p99_ms']:.0f} ms"
            if (cell := cells.get((engine, workload)))
            else "-"
            for workload in HEADLINE
        ]
        lines.append(f"| {engine} | " + " | ".join(row) + " |")
    return [*lines, ""]


def matrix_section(entry: Any, runs: list[Run]) -> list[str]:
    """The matrix's setting, its tables and its targets."""
    settings = settings_of(entry)
    table = summarise(runs)
    facts = entry.facts
    lines = [
        "The API under wrk, against the bare Flask floor (bench/floor.py:"
        " parse the JSON body, answer a small JSON object) served by the same"
        " gunicorn settings.",
        "",
        f"- Server: {facts['server']}, bound to 127.0.0.1, logging as"
        " in production (its output discarded); the floor the same",
        "- References (bench/reference.py, bench/references.py): the yardstick,"
        " the plain app served as a user serves one,"
        f" `{facts['yardstick']}`"
        " run from bench/, where no gunicorn.conf.py is: gunicorn's defaults"
        " (the sync worker); and the same app under gunicorn.conf.py. On SQLite"
        " both use WAL and the service's synchronous (FULL; NORMAL for"
        " sqlite-normal)",
        f"- Load: wrk -t{settings.threads}"
        f" -c{','.join(map(str, settings.connection_counts))}"
        f" -d{settings.duration}s (every workload at each connection count),"
        f" {settings.repeats} runs per workload, each run right after a floor"
        " run with the same script and connections; before them, each server"
        " gets 1 s of lookups, not recorded, to open its connections",
        "- Numbers: medians over the runs; ratio = median of (service req/s /"
        " req/s of the floor run just before it)",
        "- Checks: non-2xx counts wrk's non-2xx answers and socket errors;"
        " Δrows/req and Δprimaries/req are the table's change over the service"
        " runs (or those of the instances together) divided by the requests wrk"
        " counted (a lookup must be +0/+0, a new secondary +1/+0, a new primary"
        " +1/+1, a merge +0/-1, a detach +0/+1, an erase -5/-1; the requests"
        " still in flight when wrk stops, at most one per connection, change"
        " the table but are not counted)",
        "- The references insert rows of brand-new values (the new-primary"
        " bodies, whatever the workload), so that they leave the seeded"
        " customers as the service found them; their runs are not counted",
        "- Merges use disjoint pairs of seeded clusters, shared out between the"
        " service's runs at each connection count (and the baseline's and each"
        " instance's); where a size has too few"
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
        mine = [row for row in table if row["database"] == database]
        if not mine:
            continue
        lines += [
            f"### {database}",
            "",
            "| contacts | connections | workload | req/s | p50 ms | p99 ms"
            " | floor req/s | ratio to floor | non-2xx | Δrows/req"
            " | Δprimaries/req |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in mine:
            lines.append(
                f"| {row['size']:,} | {row['connections']} | {row['workload']}"
                f" | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f}"
                f" | {row['floor_rps']:.0f} | {row['ratio']:.2f}"
                f" | {row['non_2xx'] + row['socket_errors']}"
                f" | {row['rows_per_request']:+.2f}"
                f" | {row['primaries_per_request']:+.2f} |"
            )
        lines += ["", *references.table(mine)]
        lines += instances.table(mine, settings.instances)
        if any(row["baseline_rps"] for row in mine):
            lines += [
                f"Beside the baseline (BENCH_BASELINE={settings.baseline}, commit"
                f" {git('rev-parse', '--short', settings.baseline or 'HEAD')}),"
                " each baseline run after the service run, on the same"
                " database:",
                "",
                "| contacts | connections | workload | service req/s"
                " | baseline req/s | service ÷ baseline | baseline p99 ms |",
                "|---:|---:|---|---:|---:|---:|---:|",
            ]
            for row in mine:
                if row["baseline_rps"]:
                    lines.append(
                        f"| {row['size']:,} | {row['connections']}"
                        f" | {row['workload']} | {row['rps']:.0f}"
                        f" | {row['baseline_rps']:.0f}"
                        f" | {row['baseline_share']:.2f}"
                        f" | {row['baseline_p99_ms']:.1f} |"
                    )
            lines.append("")
        largest = max(row["size"] for row in mine)
        if verdicts := targets(settings, table, database):
            lines += [
                f"Targets at {largest:,} contacts, at {settings.connections}"
                " connections unless said:",
                "",
                *verdicts,
                "",
            ]
        lines += ["Seeding (bench/seed.py, bulk load):", ""]
        for seed in facts["seeds"].get(database, []):
            lines.append(f"- {seed['rows']:,} contacts in {seed['seconds']} s")
        lines.append("")
    return [*lines, *synchronous_comparison(table)]
