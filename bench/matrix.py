"""The matrix: every workload at every database and size, each service run
beside a floor run and the references, and the medians of the runs."""

import statistics
import subprocess
from dataclasses import dataclass, replace
from typing import Any

from harness import (
    BIN,
    CORRECTIONS,
    IDENTIFY_WORKLOADS,
    ROOT,
    Database,
    Server,
    Settings,
    baseline_tree,
    log,
    run_wrk,
)


@dataclass
class Run:
    database: str
    size: int
    workload: str
    repeat: int
    target: str
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


def wrk(
    settings: Settings, url: str, workload: str, seed: dict[str, Any], args: list[int]
) -> dict[str, Any]:
    script_args = [workload, seed["full_clusters"], *args, settings.threads]
    return run_wrk(settings, "identify.lua", url, script_args)


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
        self.service = Server(
            "app:app", settings.port, {"DATABASE_URL": database.url, **database.env}
        )
        self.reference = Server(
            "bench.reference:app", settings.port + 2, {"DATABASE_URL": database.url}
        )
        self.baseline = None
        if settings.baseline:
            self.baseline = Server(
                "app:app",
                settings.port + 3,
                {"DATABASE_URL": database.url},
                cwd=baseline_tree(settings.baseline),
            )
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

    def spans(self, workload: str) -> dict[str, tuple[int, int]]:
        """The span of seeded clusters that each measured target uses: merge
        pairs, or 5-row customers for the corrections. The floor and the
        references never run out."""
        # A quarter of each repetition's pairs is kept for the mix's merges.
        mix_pairs = self.pairs_per_seed // 4
        # The corrections share the 5-row customers of a seeding.
        fives = self.seeds[-1]["full_clusters"] // 5
        if workload == "merge":
            pairs = (
                self.pair_cursor + mix_pairs,
                self.pair_cursor + self.pairs_per_seed,
            )
        elif workload == "detach":
            pairs = (0, fives // 2)
        elif workload == "erase":
            pairs = (fives // 2, fives)
        else:
            pairs = (self.pair_cursor, self.pair_cursor + mix_pairs)
        if self.baseline is None or workload not in IDENTIFY_WORKLOADS:
            return {"service": pairs}
        # The service and the baseline merge disjoint halves.
        middle = (pairs[0] + pairs[1]) // 2
        return {"service": (pairs[0], middle), "baseline": (middle, pairs[1])}

    def run_phase(self, workloads: list[str], repeat: int) -> None:
        """Serve the database, warm every server up, then run each workload
        against the floor and then the service (and its reference and
        baseline)."""
        seed = self.seeds[-1]
        service = self.service
        with_reference = any(workload in REFERENCES for workload in workloads)
        baseline = self.baseline
        if not any(workload in IDENTIFY_WORKLOADS for workload in workloads):
            baseline = None
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
            if with_reference:
                self.reference.start("/select")
                warm.append(f"{self.reference.url}/select")
            if baseline is not None:
                # Its migrations may be older than the database's: no /health.
                baseline.start("/identify")
                warm.append(baseline.url)
            # Every worker opens its connections and warms its caches before
            # anything is measured: one second of lookups each, not recorded.
            warm_up = replace(self.settings, duration=1)
            for url in warm:
                wrk(warm_up, url, "lookup", seed, [self.run_number, 0, 0])
            for workload in workloads:
                targets = [("floor", self.floor.url), ("service", service.url)]
                if workload in REFERENCES:
                    path = REFERENCES[workload]
                    targets.append(("reference", f"{self.reference.url}{path}"))
                if baseline is not None and workload in IDENTIFY_WORKLOADS:
                    targets.append(("baseline", baseline.url))
                spans = self.spans(workload)
                for target, url in targets:
                    self.run(workload, repeat, target, url, spans.get(target))
            if not any(workload in CORRECTIONS for workload in workloads):
                self.pair_cursor += self.pairs_per_seed
        finally:
            service.stop()
            self.reference.stop()
            if baseline is not None:
                baseline.stop()

    def run(
        self,
        workload: str,
        repeat: int,
        target: str,
        url: str,
        span: tuple[int, int] | None,
    ) -> None:
        """One wrk run; with a span, the target is measured: the table's
        change over the run is recorded."""
        database = self.database
        before = database.counts() if span is not None else None
        result = wrk(
            self.settings,
            url,
            workload,
            self.seeds[-1],
            [self.run_number, *(span or (0, 10**9))],
        )
        self.run_number += 1
        run = Run(database.kind, self.size, workload, repeat, target, **result)
        if before is not None:
            after = database.counts()
            run.delta_rows = after[0] - before[0]
            run.delta_primaries = after[1] - before[1]
        self.runs.append(run)
        log(f"  {format_run(run)}")


# The reference (bench/reference.py) that each workload is compared with: the
# one database operation it cannot do without.
REFERENCES = {"lookup": "/select", "primary": "/insert"}
REFERENCE_NAMES = {"lookup": "one SELECT", "primary": "one INSERT and COMMIT"}


def format_run(run: Run) -> str:
    text = (
        f"{run.workload:9} #{run.repeat} {run.target:9} {run.rps:8.1f} req/s"
        f"  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:7.2f} ms"
        f"  non-2xx {run.non_2xx}  errors {run.socket_errors}"
    )
    if run.delta_rows is not None:
        text += f"  Δrows {run.delta_rows}  Δprimaries {run.delta_primaries}"
    return text


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per database, size and workload: medians over the repetitions."""
    table = []
    keys = dict.fromkeys((run.database, run.size, run.workload) for run in runs)
    for database, size, workload in keys:
        mine = [
            run
            for run in runs
            if (run.database, run.size, run.workload) == (database, size, workload)
        ]
        service = [run for run in mine if run.target == "service"]
        floor = [run for run in mine if run.target == "floor"]
        reference = [run for run in mine if run.target == "reference"]
        baseline = [run for run in mine if run.target == "baseline"]
        table.append(
            {
                "database": database,
                "size": size,
                "workload": workload,
                "rps": statistics.median(run.rps for run in service),
                "p50_ms": statistics.median(run.p50_ms for run in service),
                "p99_ms": statistics.median(run.p99_ms for run in service),
                "floor_rps": statistics.median(run.rps for run in floor),
                # Each service run against the floor run just before it.
                "ratio": statistics.median(
                    s.rps / f.rps for s, f in zip(service, floor, strict=True)
                ),
                "reference_rps": statistics.median(run.rps for run in reference)
                if reference
                else None,
                "reference_ratio": statistics.median(
                    r.rps / f.rps for r, f in zip(reference, floor, strict=True)
                )
                if reference
                else None,
                # Each service run against the baseline run just after it.
                "baseline_rps": statistics.median(run.rps for run in baseline)
                if baseline
                else None,
                "baseline_p99_ms": statistics.median(run.p99_ms for run in baseline)
                if baseline
                else None,
                "baseline_ratio": statistics.median(
                    s.rps / b.rps for s, b in zip(service, baseline, strict=True)
                )
                if baseline
                else None,
                "non_2xx": sum(run.non_2xx for run in service + reference + baseline),
                "socket_errors": sum(
                    run.socket_errors for run in service + reference + baseline
                ),
                "requests": sum(run.requests for run in service),
                # What the runs did to the table, per request wrk counted.
                "rows_per_request": sum(run.delta_rows or 0 for run in service)
                / max(1, sum(run.requests for run in service)),
                "primaries_per_request": sum(
                    run.delta_primaries or 0 for run in service
                )
                / max(1, sum(run.requests for run in service)),
            }
        )
    return table
