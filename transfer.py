"""`flask --app app contacts import FILE` and `contacts export FILE`: options,
progress and summaries around import_lines.py, importing.py and
exporting.py (README: "Importing and exporting")."""

import logging
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
from flask import current_app
from flask.cli import with_appcontext
from tqdm import tqdm

import exporting
import importing
from guard import builtin_rule
from import_lines import FORMATS, CannotImport, format_of, read_sorted
from importing import AnotherRun, Tally
from locks import LostRace
from masking import json_formatter
from models import db
from reconcile import EMAIL

# Lines applied per transaction, by engine: SQLite's writers, and
# PostgreSQL's writers of the batch's values, wait for the batch while it
# writes. SQLite holds its lock for the writes alone (about 0.25 s for
# 5,000 lines); PostgreSQL holds its locks while the batch is decided too
# (1.4 s for 5,000 lines).
BATCH_SIZE = {"sqlite": 5000, "postgresql": 2000}
# Plain progress lines, when stderr is not a terminal: one every so often.
_PLAIN_EVERY = 5.0

log = logging.getLogger("contacts.transfer")


class Meter:
    """Progress on stderr: a tqdm bar (count, rate, ETA) on a terminal, else
    a plain line every _PLAIN_EVERY seconds and one at the end."""

    def __init__(self, what: str, total: int | None, unit: str) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.count = 0
        self.started = self.said = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            self.bar = tqdm(
                total=total, desc=what, unit=f" {unit}", unit_scale=True, leave=True
            )

    def __call__(self, count: int) -> None:
        self.count += count
        if self.bar is not None:
            self.bar.update(count)
        elif time.monotonic() - self.said >= _PLAIN_EVERY:
            self._say()

    def already(self, count: int) -> None:
        """Start from `count`, done before this run."""
        self.count = count
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._say()

    def _say(self) -> None:
        self.said = time.monotonic()
        elapsed = max(self.said - self.started, 1e-9)
        rate = self.count / elapsed
        line = f"{self.what}: {self.count:,}"
        if self.total is not None:
            line += f" of {self.total:,}"
        line += f" {self.unit}, {rate:,.0f} {self.unit}/s"
        if self.total is not None and rate > 0 and self.count < self.total:
            line += f", about {(self.total - self.count) / rate:,.0f} s left"
        click.echo(line, err=True)


def _stop_on_sigterm(_: int, __: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="csv or ndjson, when the extension (.csv, .ndjson, .jsonl) does not say.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where bad lines' numbers and reasons go (default: FILE.rejects.csv).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    help="Lines applied per transaction (default: 5,000 on SQLite, 2,000 on"
    " PostgreSQL).",
)
@with_appcontext
def import_command(
    file: Path, fmt: str | None, rejects: Path | None, batch_size: int | None
) -> None:
    """Import a shop's history: each line of FILE (email, phoneNumber,
    createdAt) as /identify would take it, oldest createdAt first. Run it
    again after an interruption: it goes on where it stopped."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    guard = current_app.config["GUARD"]
    rejects = rejects or file.with_name(file.name + ".rejects.csv")
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            fmt = format_of(file, fmt)
            size = file.stat().st_size if file.is_file() else None
            written = _rejects_file(rejects, stack)
            reading = Meter(f"reading {file.name}", size, "bytes")
            lines = read_sorted(
                file,
                fmt,
                written,
                stack,
                unchecked=lambda email: (
                    guard.builtin and builtin_rule(EMAIL, email) is not None
                ),
                progress=reading,
            )
            reading.close()
        except CannotImport as error:
            raise click.ClickException(f"Nothing imported: {error}") from None
        written.close()
        os.replace(written.name, rejects)
        applying = Meter("importing", lines.lines, "lines")
        first = True

        def done(count: int) -> None:
            nonlocal first
            if first:
                applying.already(count)
                first = False
            else:
                applying(count)

        try:
            with db.engine.connect() as connection:
                try:
                    tally, before = importing.import_sorted(
                        connection,
                        lines,
                        guard=guard,
                        batch_size=batch_size or BATCH_SIZE[connection.dialect.name],
                        done=done,
                    )
                except KeyboardInterrupt:
                    # Stopped in the middle of a statement, the connection
                    # cannot be rolled back on its way back to the pool (the
                    # driver refuses a second command): close it instead; the
                    # server rolls the batch back.
                    connection.invalidate()
                    raise
        except KeyboardInterrupt:
            raise click.ClickException(
                f"Interrupted after {applying.count:,} of {lines.lines:,} lines:"
                " every batch committed is whole. Run the same command again to"
                " import the rest."
            ) from None
        except (AnotherRun, LostRace) as error:
            raise click.ClickException(
                f"Stopped after {applying.count:,} of {lines.lines:,} lines: {error}."
                " Run the same command again to import the rest."
            ) from None
        applying.close()
    _summary(lines.read, lines.rejected, before, tally, rejects)
    _log(
        "import",
        {
            "read": lines.read,
            "rejected": lines.rejected,
            "already_imported": before,
            **_counts(tally),
            "seconds": round(time.monotonic() - started, 3),
        },
    )


def _rejects_file(path: Path, stack: ExitStack) -> IO[str]:
    """A new file beside `path`, readable by its owner only (the line numbers
    point into the shop's customer data), renamed to `path` once the input
    is read whole."""
    handle = tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        newline="",
        dir=path.parent,
        prefix=f".{path.name}.",
        delete=False,
    )

    def discard() -> None:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)

    stack.callback(discard)
    return handle


def _counts(tally: Tally) -> dict[str, int]:
    return {
        "customers_created": tally.created,
        "contacts_added": tally.added,
        "customers_merged": tally.merged,
        "unchanged": tally.unchanged,
        "not_stored": tally.not_stored,
        "ignored_blocked": tally.ignored["blocked"],
        "ignored_suppressed": tally.ignored["suppressed"],
        "ignored_limit": tally.ignored["limit"],
        "events": tally.events,
        "longest_lock_ms": round(tally.longest_lock * 1000),
    }


def _summary(
    read: int, rejected: int, before: int, tally: Tally, rejects: Path
) -> None:
    rows = [
        ("lines read", read),
        ("rejected", rejected),
        ("imported by an earlier run", before),
        ("created a customer", tally.created),
        ("added a contact", tally.added),
        ("merged customers", tally.merged),
        ("unchanged", tally.unchanged),
        ("not stored (every value ignored)", tally.not_stored),
        ("values ignored: blocked", tally.ignored["blocked"]),
        ("values ignored: suppressed", tally.ignored["suppressed"]),
        ("values ignored: limit", tally.ignored["limit"]),
        ("events appended", tally.events),
        ("longest a batch held its locks, ms", round(tally.longest_lock * 1000)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value:>12,}")
    if rejected:
        click.echo(f"Rejected lines, with their numbers and reasons: {rejects}")


def _log(message: str, fields: dict[str, Any]) -> None:
    """One JSON line on stderr, masked as the service's are (counts only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info(message, extra=fields)
    finally:
        log.removeHandler(handler)


@click.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@with_appcontext
def export_command(file: str) -> None:
    """Write every customer to FILE (- for stdout) as NDJSON: its contact
    view and the createdAt of its primary, ascending primary id."""
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            out: IO[str] = (
                sys.stdout
                if file == "-"
                else stack.enter_context(open(file, "w", encoding="utf-8"))  # noqa: SIM115
            )
        except OSError as error:
            raise click.ClickException(
                f"Nothing exported: cannot write {file}: {error.strerror}."
            ) from None
        meter = Meter("exporting", None, "customers")
        with db.engine.connect() as connection:
            count = exporting.export(connection, out, progress=meter)
        out.flush()
        meter.close()
    click.echo(f"Exported {count:,} customers.", err=True)
    _log(
        "export",
        {"customers": count, "seconds": round(time.monotonic() - started, 3)},
    )
