"""The references the service is held against: the one database operation
that each workload cannot do without (bench/reference.py), served two ways.

- the yardstick: as a user serves a plain Flask app, `gunicorn -w WORKERS
  bench.reference:app`, every other setting gunicorn's default (the sync
  worker: each process serves one request at a time and closes the
  connection after it; no gunicorn.conf.py), WORKERS being the service's;
- the reference: the same app under the service's own gunicorn.conf.py (the
  threaded worker), which shows what the server, not the app, costs.

Both run after the service (and the instances) in every repetition and at
every connection count; a ratio is the median over the repetitions of the
service's req/s divided by theirs in the same repetition.
"""

from typing import Any

from harness import BENCH, BIN, HOST, ROOT, Server, Settings

APP = "bench.reference:app"
# The path each workload's reference serves, and the workload of
# bench/identify.lua that drives it. Every insert gets a brand-new email and
# phone: a row sharing a seeded customer's value without being linked to it
# would turn the service's later requests into merges.
REFERENCES = {
    "lookup": ("/select", "lookup"),
    "customers_lookup": ("/select", "lookup"),
    "secondary": ("/insert", "primary"),
    "primary": ("/insert", "primary"),
    "merge": ("/insert", "primary"),
}
OPERATIONS = {"/select": "one SELECT", "/insert": "one INSERT and COMMIT"}
WRITES = ("secondary", "primary", "merge")
# At the largest size: service req/s at least this times the yardstick's,
# and p99 under these ms, at the first connection count; the writes' ratio
# at every other count too (p99 is shown there, not judged: it grows with
# the queue).
TARGETS = {
    "lookup": (1.0, 20.0),
    "secondary": (0.8, 40.0),
    "primary": (0.8, 40.0),
    "merge": (0.8, 40.0),
}


def yardstick_command(settings: Settings, port: int) -> list[str]:
    """The yardstick's command line. It runs in bench/, where no
    gunicorn.conf.py is (gunicorn reads one from its working directory),
    then changes to the repository to import the app; the bind is given
    because gunicorn would take PORT from the environment for 0.0.0.0."""
    return [str(BIN / "gunicorn"), *yardstick_arguments(settings, port, str(ROOT))]


def yardstick_arguments(settings: Settings, port: int, repository: str) -> list[str]:
    return [
        "-w",
        str(settings.workers),
        "-b",
        f"{HOST}:{port}",
        "--chdir",
        repository,
        APP,
    ]


def yardstick_shown(settings: Settings, port: int) -> str:
    """The yardstick's command as the report shows it: run from bench/,
    with the virtualenv's gunicorn."""
    return " ".join(["gunicorn", *yardstick_arguments(settings, port, "..")])


def yardstick(settings: Settings, port: int, extra_env: dict[str, str]) -> Server:
    return Server(
        APP,
        port,
        extra_env,
        workers=settings.workers,
        cwd=BENCH,
        command=yardstick_command(settings, port),
    )


def reference(settings: Settings, port: int, extra_env: dict[str, str]) -> Server:
    return Server(APP, port, extra_env, workers=settings.workers)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The service beside both references, for the rows that have them."""
    rows = [row for row in rows if row["yardstick_rps"] is not None]
    if not rows:
        return []
    lines = [
        "Against one database operation (bench/reference.py): the yardstick"
        " (the plain app under gunicorn's defaults) and the same app under"
        " gunicorn.conf.py, each run after the service; ratios are"
        " medians of the per-repetition ratios:",
        "",
        "| contacts | connections | workload | operation | service req/s"
        " | service p99 ms | yardstick req/s | yardstick p99 ms"
        " | service ÷ yardstick | under gunicorn.conf.py req/s"
        " | service ÷ that |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        path, _ = REFERENCES[row["workload"]]
        lines.append(
            f"| {row['size']:,} | {row['connections']} | {row['workload']}"
            f" | {OPERATIONS[path]} | {row['rps']:.0f} | {row['p99_ms']:.1f}"
            f" | {row['yardstick_rps']:.0f} | {row['yardstick_p99_ms']:.1f}"
            f" | {row['yardstick_share']:.2f} | {row['reference_rps']:.0f}"
            f" | {row['reference_share']:.2f} |"
        )
    return [*lines, ""]


def targets(rows: list[dict[str, Any]], size: int, first: int) -> list[str]:
    """One line per target of TARGETS met or not at `size` contacts: every
    workload at `first` connections, the writes at the other counts."""
    lines = []
    for row in rows:
        workload, connections = row["workload"], row["connections"]
        if (
            row["size"] != size
            or workload not in TARGETS
            or row["yardstick_share"] is None
            or (connections != first and workload not in WRITES)
        ):
            continue
        share, limit = TARGETS[workload]
        path, _ = REFERENCES[workload]
        ok = row["yardstick_share"] >= share
        claim = f"{share} x {OPERATIONS[path]} (the yardstick)"
        if connections == first:
            ok = ok and row["p99_ms"] < limit
            claim += f" and p99 < {limit:.0f} ms"
        lines.append(
            f"- {workload} at {connections} connections >= {claim}:"
            f" x{row['yardstick_share']:.2f}, p99 {row['p99_ms']:.1f} ms,"
            f" {'met' if ok else 'NOT met'}"
        )
    return lines
