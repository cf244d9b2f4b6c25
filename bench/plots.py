"""The charts of the report, drawn with matplotlib as PNG files: one per
series where a picture reads faster than its table."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from harness import medians  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Which matrix targets are drawn, in this order, beside the service.
MATRIX_TARGETS = ("service", "yardstick", "floor")


def save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=96)
    plt.close(figure)


def bars(
    axes: Axes, groups: list[str], series: dict[str, list[float]], ylabel: str
) -> None:
    """Side-by-side bars: one group per label, one bar per series."""
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        axes.bar(
            [position + index * width for position in range(len(groups))],
            values,
            width,
            label=label,
        )
    axes.set_xticks(
        [position + width * (len(series) - 1) / 2 for position in range(len(groups))],
        groups,
    )
    axes.set_ylabel(ylabel)
    axes.set_ylim(top=axes.get_ylim()[1] * 1.2)
    axes.legend(fontsize="small", loc="upper center", ncols=len(series))


def matrix(runs: list[Any], path: Path) -> None:
    """req/s of each workload, the service beside the yardstick and the
    floor, at the largest size and the first connection count, per engine."""
    first = runs[0].connections
    largest = max(run.size for run in runs)
    kept = [run for run in runs if (run.connections, run.size) == (first, largest)]
    rps = medians(kept, lambda run: (run.database, run.workload, run.target), "rps")
    engines = list(dict.fromkeys(run.database for run in kept))
    figure, axes = plt.subplots(
        1, len(engines), figsize=(5 * len(engines), 4), squeeze=False
    )
    for engine, panel in zip(engines, axes[0], strict=True):
        workloads = list(
            dict.fromkeys(run.workload for run in kept if run.database == engine)
        )
        bars(
            panel,
            workloads,
            {
                target: [rps.get((engine, w, target), 0.0) for w in workloads]
                for target in MATRIX_TARGETS
            },
            "req/s (median)",
        )
        panel.set_title(f"{engine}, {largest:,} contacts, {first} connections")
    save(figure, path)


def cluster(runs: list[Any], path: Path) -> None:
    """p50 against the rows of the cluster, a line per engine and workload."""
    p50 = medians(runs, lambda run: (run.database, run.workload, run.rows), "p50_ms")
    figure, axes = plt.subplots(figsize=(6, 4))
    for line in dict.fromkeys((database, workload) for database, workload, _ in p50):
        points = [(rows, ms) for (*key, rows), ms in p50.items() if tuple(key) == line]
        axes.plot(*zip(*points, strict=True), marker="o", label=" ".join(line))
    axes.set_xlabel("rows in the cluster")
    axes.set_ylabel("p50 ms (median)")
    axes.legend(fontsize="small")
    save(figure, path)


def detach(runs: list[Any], path: Path) -> None:
    """p50 of each detach, per engine and value, per server."""
    p50 = medians(runs, lambda run: (run.database, run.value, run.target), "ms")
    groups = list(dict.fromkeys((database, value) for database, value, _ in p50))
    targets = list(dict.fromkeys(target for *_, target in p50))
    figure, axes = plt.subplots(figsize=(6, 4))
    bars(
        axes,
        [f"{database}\n{value}" for database, value in groups],
        {
            target: [p50.get((*group, target), 0.0) for group in groups]
            for target in targets
        },
        "p50 ms (median)",
    )
    save(figure, path)


def graph(runs: list[Any], path: Path) -> None:
    """req/s of the graph beside the yardstick's, per engine."""
    rps = medians(runs, lambda run: (run.database, run.target), "rps")
    engines = list(dict.fromkeys(database for database, _ in rps))
    figure, axes = plt.subplots(figsize=(5, 4))
    bars(
        axes,
        engines,
        {
            target: [rps.get((engine, target), 0.0) for engine in engines]
            for target in ("service", "yardstick")
        },
        "req/s (median)",
    )
    save(figure, path)
