"""The series the bench knows and the current report built from them.

Each series is a `Series`: a name (what BENCH_SERIES lists), a title, the
dataclass of one of its records (or a function from a record's fields to
the dataclass they are, for a series of several kinds), the function that
measures it, the one that renders its section and, where a picture says
more than the table, the one that draws its chart. A measurement appends
an `Entry` (the records of one series at one commit) to the history,
BENCH_OUT's .json; the report, BENCH_OUT, holds the latest entry of every
series, so that running one series replaces that series' section only."""

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import plots
from delivery_bench import WebhookRun, webhook_report, webhook_series
from graph_series import GraphRun, graph_report, graph_series
from harness import Measured, Settings
from imports import import_record, import_section, import_series
from matrix import Run, matrix_series
from report import headline, machine, matrix_section
from series import (
    LARGE_ROWS,
    ClusterRun,
    Flood,
    LargeDetach,
    cluster_report,
    cluster_series,
    detach_report,
    detach_series,
    flood_report,
    placeholder_flood,
)


@dataclass
class Entry:
    """One series measured once: its records (dicts, as in the history)
    and where, when and how they were measured. The entries recovered from
    reports older than the history's shape lack what those did not record:
    minutes, command or machine."""

    series: str
    commit: str
    date: str
    minutes: float | None
    command: str | None
    machine: dict[str, str] | None
    settings: dict[str, Any]
    facts: dict[str, Any]
    records: list[dict[str, Any]]

    def runs(self, record: Callable[..., Any]) -> list[Any]:
        return [record(**fields) for fields in self.records]


@dataclass(frozen=True)
class Series:
    name: str
    title: str
    record: Callable[..., Any]
    run: Callable[[Settings], Measured]
    section: Callable[[Entry, list[Any]], list[str]]
    chart: Callable[[list[Any], Path], None] | None = None

    def failed(self, entry: Entry) -> bool:
        return any(
            record.get("non_2xx") or record.get("socket_errors")
            for record in entry.records
        )


def records(run: Callable[[Settings], list[Any]]) -> Callable[[Settings], Measured]:
    """A series' run that has no facts beside its records."""
    return lambda settings: Measured(run(settings))


def table(render: Callable[[list[Any]], list[str]]) -> Callable[..., list[str]]:
    """A section that needs the records alone."""
    return lambda _entry, runs: render(runs)


SERIES = (
    Series(
        "matrix",
        "Identify and the other workloads",
        Run,
        matrix_series,
        matrix_section,
        plots.matrix,
    ),
    Series(
        "cluster",
        "Cluster size",
        ClusterRun,
        records(cluster_series),
        table(cluster_report),
        plots.cluster,
    ),
    Series(
        "flood",
        "Placeholder flood",
        Flood,
        records(placeholder_flood),
        table(flood_report),
    ),
    Series(
        "detach",
        f"Detach from a {LARGE_ROWS:,}-row customer",
        LargeDetach,
        records(detach_series),
        table(detach_report),
        plots.detach,
    ),
    Series(
        "graph",
        "The graph of a customer",
        GraphRun,
        records(graph_series),
        table(graph_report),
        plots.graph,
    ),
    Series(
        "webhooks",
        "Webhook delivery",
        WebhookRun,
        records(webhook_series),
        table(webhook_report),
    ),
    Series(
        "import",
        "Import and export",
        import_record,
        records(import_series),
        import_section,
    ),
)
NAMES = ",".join(series.name for series in SERIES)


def command() -> str:
    """The command that measured: the BENCH_* settings and `make bench`."""
    return " ".join(
        [
            *(
                f"{name}={shlex.quote(value)}"
                for name, value in sorted(os.environ.items())
                if name.startswith("BENCH_")
            ),
            "make bench",
        ]
    )


def entry(
    series: Series,
    settings: Settings,
    measured: Measured,
    commit: str,
    started: datetime,
    minutes: float,
) -> Entry:
    return Entry(
        series=series.name,
        commit=commit,
        date=f"{started:%Y-%m-%d %H:%M}",
        minutes=round(minutes, 1),
        command=command(),
        machine=machine(),
        settings={**asdict(settings), "out": settings.out.name},
        facts=measured.facts,
        records=[asdict(record) for record in measured.records],
    )


def load(history: Path) -> list[Entry]:
    if not history.exists():
        return []
    return [Entry(**fields) for fields in json.loads(history.read_text())]


def save(history: Path, entries: list[Entry]) -> None:
    text = json.dumps([asdict(entry) for entry in entries], indent=1)
    history.write_text(text + "\n")


def latest(entries: list[Entry]) -> dict[str, Entry]:
    """The last entry of each series in the history."""
    return {entry.series: entry for entry in entries}


def render(entries: list[Entry], out: Path) -> str:
    """The report of the latest entry of every series, each series' chart
    drawn in bench/charts/NAME.png beside it and linked."""
    current = latest(entries)
    directory = out.parent / "bench" / "charts"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/run.py) from the latest records of each"
        f" series in {out.with_suffix('.json').name}, which keeps every run;"
        " do not edit by hand. Each section says the commit, date and command"
        " that measured it; running one series (BENCH_SERIES) replaces its"
        " section only.",
        "",
    ]
    if "matrix" in current:
        lines += headline(current["matrix"])
    lines += [
        "Series:",
        "",
        *(
            f"- [{series.title}](#{anchor(series.title)}) ({series.name}): "
            + (
                f"{current[series.name].date} UTC at {current[series.name].commit}"
                if series.name in current
                else "not measured yet"
            )
            for series in SERIES
        ),
        "",
    ]
    for series in SERIES:
        lines += [f"## {series.title}", ""]
        found = current.get(series.name)
        if found is None:
            lines += [
                f"Not measured yet: `BENCH_SERIES={series.name} make bench`"
                " measures it.",
                "",
            ]
            continue
        lines += [*provenance(found), ""]
        runs = found.runs(series.record)
        if series.chart is not None:
            directory.mkdir(parents=True, exist_ok=True)
            chart = directory / f"{series.name}.png"
            series.chart(runs, chart)
            lines += [f"![{series.title}]({chart.relative_to(out.parent)})", ""]
        lines += series.section(found, runs)
    return "\n".join(lines).rstrip("\n") + "\n"


def provenance(entry: Entry) -> list[str]:
    """Where, when and how `entry` was measured, as far as it says."""
    measured = f"- Measured at commit {entry.commit}, {entry.date} UTC"
    if entry.minutes is not None:
        measured += f", in {entry.minutes:g} min"
    measured += f", by `{entry.command}`" if entry.command else "; command not recorded"
    facts = entry.machine
    if not facts:
        return [measured, "- Machine: not recorded"]
    return [
        measured,
        f"- Machine: {facts['nproc']} cores ({facts['cpu']}), {facts['memory']}"
        f" RAM, Python {facts['python']}, Linux {facts['kernel']}; shared with"
        " other work, so noisy",
    ]


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")


def write(out: Path, entries: list[Entry]) -> None:
    out.write_text(render(entries, out))
