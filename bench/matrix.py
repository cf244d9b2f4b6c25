"""The matrix: every workload at every database, size and connection count,
each service run beside a floor run, the references and the instances, and
the medians of the runs."""

import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Any

from harness import (
    BIN,
    CORRECTIONS,
    IDENTIFY_WORKLOADS,
    READS,
    ROOT,
    Database,
    Measured,
    Server,
    Settings,
    app_server,
    gunicorn_settings,
    log,
    run_wrk,
)
from instances import load_together, measured
from references import REFERENCES, reference, yardstick, yardstick_shown


@dataclass
class Run:
    database: str
    size: int
    workload: str
    repeat: int
    target: str
    connections: int
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


# The targets whose runs are counted, each on a span of its own.
MEASURED = ("service", "instances", "baseline")
SETTLE_SECONDS = 60


def wrk(
    settings: Settings, url: str, workload: str, seed: dict[str, Any], args: list[int]
) -> dict[str, Any]:
    return run_wrk(
        settings, "identify.lua", url, script(settings, workload, seed, args)
    )


def script(
    settings: Settings, workload: str, seed: dict[str, Any], args: list[int]
) -> list[Any]:
    """The arguments of bench/identify.lua: RUN, PAIR_LO and PAIR_HI in `args`."""
    return [workload, seed["full_clusters"], *args, settings.threads]


def split(span: tuple[int, int], parts: int) -> list[tuple[int, int]]:
    """`span` cut into `parts` disjoint spans of (nearly) equal length."""
    low, high = span
    edges = [low + (high - low) * part // parts for part in range(parts + 1)]
    return list(zip(edges, edges[1:], strict=False))


def matrix_series(settings: Settings) -> Measured:
    """The matrix at every database and size, the floor served throughout;
    its facts: the seedings of each database and how the servers ran."""
    runs: list[Run] = []
    seeds: dict[str, list[dict[str, Any]]] = {}
    floor = Server("bench.floor:app", settings.port + 1, {}, workers=settings.workers)
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
    facts = {
        "seeds": seeds,
        "server": gunicorn_settings(settings),
        "yardstick": yardstick_shown(settings, settings.port + 4),
    }
    return Measured(runs, facts)


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
        served = {"DATABASE_URL": database.url, **database.env}
        self.service = app_server(settings, database)
        self.reference = reference(settings, settings.port + 2, served)
        self.baseline = None
        if settings.baseline:
            self.baseline = app_server(
                settings, database, settings.port + 3, baseline=True
            )
        self.yardstick = yardstick(settings, settings.port + 4, served)
        # The service is the first of the instances loaded at once.
        self.instances = [self.service] + [
            app_server(settings, database, settings.port + 5 + n)
            for n in range(settings.instances - 1)
        ]
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

    def span(self, workload: str) -> tuple[int, int]:
        """The span of seeded clusters that the measured runs of `workload`
        share in this repetition: merge pairs, or 5-row customers for the
        corrections. The floor and the references never run out."""
        # A quarter of each repetition's pairs is kept for the mix's merges.
        mix_pairs = self.pairs_per_seed // 4
        # The corrections share the 5-row customers of a seeding.
        fives = self.seeds[-1]["full_clusters"] // 5
        if workload == "merge":
            return (
                self.pair_cursor + mix_pairs,
                self.pair_cursor + self.pairs_per_seed,
            )
        if workload == "detach":
            return (0, fives // 2)
        if workload == "erase":
            return (fives // 2, fives)
        return (self.pair_cursor, self.pair_cursor + mix_pairs)

    def run_phase(self, workloads: list[str], repeat: int) -> None:
        """Serve the database, warm every server up, then run each workload
        at each connection count against the floor and then the service (and
        the references, the baseline and the instances)."""
        seed = self.seeds[-1]
        service = self.service
        references = [self.reference, self.yardstick]
        if not any(workload in REFERENCES for workload in workloads):
            references = []
        baseline = self.baseline
        if not any(workload in IDENTIFY_WORKLOADS for workload in workloads):
            baseline = None
        engine = self.database.engine
        others = self.instances[1:]
        if not any(measured(self.settings, engine, w) for w in workloads):
            others = []
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
            for server in references:
                server.start("/select")
                warm.append(f"{server.url}/select")
            if baseline is not None:
                # Its migrations may be older than the database's: no /health.
                baseline.start("/identify")
                warm.append(baseline.url)
            for server in others:
                server.start("/health")
                warm.append(server.url)
            # Every worker opens its connections and warms its caches before
            # anything is measured: one second of lookups each, not recorded.
            warm_up = replace(self.settings, duration=1)
            for url in warm:
                wrk(warm_up, url, "lookup", seed, [self.run_number, 0, 0])
            for workload in workloads:
                self.run_workload(workload, repeat, baseline)
            if not any(workload in CORRECTIONS for workload in workloads):
                self.pair_cursor += self.pairs_per_seed
        finally:
            for server in [service, *references, *others]:
                server.stop()
            if baseline is not None:
                baseline.stop()

    def run_workload(self, workload: str, repeat: int, baseline: Server | None) -> None:
        """`workload` at each connection count, against each target in turn;
        the measured runs (the service's, the baseline's and each
        instance's) share the span of the repetition."""
        targets: list[tuple[str, list[str], str]] = [
            ("floor", [self.floor.url], workload),
            ("service", [self.service.url], workload),
        ]
        if measured(self.settings, self.database.engine, workload):
            urls = [server.url for server in self.instances]
            targets.append(("instances", urls, workload))
        if workload in REFERENCES:
            path, driven_by = REFERENCES[workload]
            for name, server in (
                ("reference", self.reference),
                ("yardstick", self.yardstick),
            ):
                targets.append((name, [f"{server.url}{path}"], driven_by))
        if baseline is not None and workload in IDENTIFY_WORKLOADS:
            targets.append(("baseline", [baseline.url], workload))
        counts = self.settings.connection_counts
        shares = sum(len(urls) for name, urls, _ in targets if name in MEASURED)
        spans = iter(split(self.span(workload), len(counts) * shares))
        for connections in counts:
            settings = replace(self.settings, connections=connections)
            for name, urls, driven_by in targets:
                mine = [next(spans) for _ in urls] if name in MEASURED else None
                on_database = name != "floor"
                result = self.load(settings, urls, driven_by, mine, on_database)
                self.record(workload, repeat, name, settings, result)

    def load(
        self,
        settings: Settings,
        urls: list[str],
        workload: str,
        spans: list[tuple[int, int]] | None,
        on_database: bool,
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """One wrk run against each of `urls` at once, on `spans` when the
        target is measured, and then the table's change over the run. When
        the target writes to the database, the run ends when the table has
        settled."""
        before = self.database.counts() if spans is not None else None
        arguments = []
        for span in spans or [(0, 10**9)] * len(urls):
            seed = self.seeds[-1]
            arguments.append(script(settings, workload, seed, [self.run_number, *span]))
            self.run_number += 1
        if len(urls) == 1:
            result = run_wrk(settings, "identify.lua", urls[0], arguments[0])
        else:
            result = load_together(settings, urls, arguments)
        after = None
        if on_database and workload not in READS:
            after = self.settle()
        elif before is not None:
            after = self.database.counts()
        if before is None or after is None:
            return result, None
        return result, (after[0] - before[0], after[1] - before[1])

    def settle(self) -> tuple[int, int]:
        """The table's (live rows, live primaries) once they stop changing.
        wrk stops with a request in flight on each connection, and more wait
        in the listen backlog of a server whose workers are all busy (30 of
        32 connections to 2 sync workers); they are still served, and would
        slow the next run and be counted in it."""
        counts = self.database.counts()
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = self.database.counts()
            if again == counts:
                return counts
            counts = again
        raise SystemExit(f"the table still changed {SETTLE_SECONDS} s after a run")

    def record(
        self,
        workload: str,
        repeat: int,
        target: str,
        settings: Settings,
        loaded: tuple[dict[str, Any], tuple[int, int] | None],
    ) -> None:
        result, change = loaded
        run = Run(
            self.database.kind,
            self.size,
            workload,
            repeat,
            target,
            settings.connections,
            **result,
        )
        if change is not None:
            run.delta_rows, run.delta_primaries = change
        self.runs.append(run)
        log(f"  {format_run(run)}")


def format_run(run: Run) -> str:
    text = (
        f"{run.workload:9} #{run.repeat} {run.target:9} c{run.connections:<3}"
        f" {run.rps:8.1f} req/s"
        f"  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms"
        f"  non-2xx {run.non_2xx}  errors {run.socket_errors}"
    )
    if run.delta_rows is not None:
        text += f"  Δrows {run.delta_rows}  Δprimaries {run.delta_primaries}"
    return text


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per database, size, workload and connection count: medians
    over the repetitions. A ratio to another target is the median of the
    ratios of the runs of each repetition: the floor run just before the
    service run, the others just after it."""
    table = []

    def key(run: Run) -> tuple[str, int, str, int]:
        return run.database, run.size, run.workload, run.connections

    for database, size, workload, connections in dict.fromkeys(map(key, runs)):
        mine = [
            run for run in runs if key(run) == (database, size, workload, connections)
        ]
        of = {
            target: [run for run in mine if run.target == target]
            for target in (
                "service",
                "floor",
                "reference",
                "yardstick",
                "baseline",
                "instances",
            )
        }
        service = of["service"]
        row: dict[str, Any] = {
            "database": database,
            "size": size,
            "workload": workload,
            "connections": connections,
            "rps": median(service, "rps"),
            "p50_ms": median(service, "p50_ms"),
            "p99_ms": median(service, "p99_ms"),
            "floor_rps": median(of["floor"], "rps"),
            "ratio": share(service, of["floor"]),
            "non_2xx": sum(run.non_2xx for run in mine if run.target != "floor"),
            "socket_errors": sum(
                run.socket_errors for run in mine if run.target != "floor"
            ),
            "requests": sum(run.requests for run in service),
            **per_request(service, ""),
            **per_request(of["instances"], "instances_"),
            "instances_failed": sum(
                run.non_2xx + run.socket_errors for run in of["instances"]
            ),
        }
        for target in ("reference", "yardstick", "baseline", "instances"):
            row[f"{target}_rps"] = median(of[target], "rps")
            row[f"{target}_p99_ms"] = median(of[target], "p99_ms")
            # The instances against the service; the service against the others.
            row[f"{target}_share"] = (
                share(of[target], service)
                if target == "instances"
                else share(service, of[target])
            )
        table.append(row)
    return table


def median(runs: list[Run], field: str) -> float | None:
    if not runs:
        return None
    return float(statistics.median(getattr(run, field) for run in runs))


def share(runs: list[Run], others: list[Run]) -> float | None:
    """The median of the req/s of each of `runs` divided by that of the run
    of `others` measured in the same repetition."""
    if not runs or not others:
        return None
    return statistics.median(
        run.rps / other.rps for run, other in zip(runs, others, strict=True)
    )


def per_request(runs: list[Run], prefix: str) -> dict[str, float]:
    """What `runs` did to the table, per request wrk counted."""
    requests = max(1, sum(run.requests for run in runs))
    return {
        f"{prefix}rows_per_request": sum(run.delta_rows or 0 for run in runs)
        / requests,
        f"{prefix}primaries_per_request": sum(run.delta_primaries or 0 for run in runs)
        / requests,
    }
