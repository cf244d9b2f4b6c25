"""The lines of a file to import, read, checked and sorted in the order they
are applied (README: "Importing and exporting").

A file is CSV with a header or NDJSON, one record per line. Each line is
checked and normalised as /identify checks a body (validation.py); a bad one
is written to the rejects file with its line number and the reason, never
with its values. The good ones are sorted by createdAt, file order breaking
ties, lines without createdAt last: an external sort (sorted runs of at most
RUN_LINES lines in temporary files, merged with heapq.merge), so memory stays
bounded whatever the size of the file."""

import csv
import hashlib
import heapq
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

from validation import (
    MAX_BODY_BYTES,
    InvalidInput,
    check_email,
    normalise_phone_number,
    trim_email,
)

FORMATS = ("csv", "ndjson")
_EXTENSIONS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}
# The longest line read, as the largest body /identify reads.
MAX_LINE_BYTES = MAX_BODY_BYTES
# Lines sorted in memory before they go to a temporary file as one run:
# about 40 MB of Python strings.
RUN_LINES = 200_000
EMAIL, PHONE_NUMBER, CREATED_AT = "email", "phoneNumber", "createdAt"
# RFC 3339 date-time: a date, T (or a space), a time with seconds, an offset.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
# Lines without createdAt sort after every timestamp (digits sort before it).
_NO_TIME = "~"


class CannotImport(Exception):
    """The file cannot be imported at all: unreadable, of an unknown format,
    or its header lacks a column. The message says which, in one line."""


@dataclass(frozen=True)
class Line:
    """A good line, normalised: what /identify would be sent."""

    number: int
    email: str | None
    phone_number: str | None
    created_at: datetime | None


@dataclass
class Sorted:
    """A file's good lines in the order they are applied, and what reading
    it found: its SHA-256 (its identity for resuming), the lines read (the
    header and blank lines aside) and the lines rejected."""

    sha256: str
    read: int
    rejected: int
    lines: int
    runs: list[IO[str]]
    in_memory: list[str]

    def __iter__(self) -> Iterator[Line]:
        records = heapq.merge(*self.runs) if self.runs else iter(self.in_memory)
        for record in records:
            yield _line(record)


def format_of(path: Path, given: str | None) -> str:
    """The format named by --format, else by the file's extension. Raises
    CannotImport."""
    if given is not None:
        return given
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise CannotImport(
            f"cannot tell the format of {path.name} from its extension:"
            " give --format csv or --format ndjson."
        )
    return found


def read_sorted(
    path: Path,
    fmt: str,
    rejects: IO[str],
    stack: ExitStack,
    *,
    unchecked: Callable[[str], bool] = lambda _: False,
    progress: Callable[[int], None] = lambda _: None,
) -> Sorted:
    """Read, check and sort the lines of `path`; write each bad line's number
    and reason to `rejects` (CSV: line,reason). An email for which
    `unchecked` is true (one the built-in blocklist drops: /identify ignores
    it before checking its syntax) is kept as trimmed. The runs are temporary
    files that `stack` closes (and so deletes). `progress` is told how many
    bytes each line took. Raises CannotImport."""
    try:
        source = stack.enter_context(path.open("rb"))
    except OSError as error:
        raise CannotImport(f"cannot read {path}: {error.strerror}.") from None
    digest = hashlib.sha256()
    writer = csv.writer(rejects, lineterminator="\n")
    writer.writerow(["line", "reason"])

    def check(email: str) -> str:
        return email if unchecked(email) else _checked_email(email)

    parse: Callable[[int, str], Line] | None = None
    if fmt == "ndjson":
        parse = partial(_ndjson, check)
    header: list[str] | None = None
    run: list[str] = []
    runs: list[IO[str]] = []
    read = rejected = lines = 0
    for number, raw, size in _physical_lines(source, digest, path):
        progress(size)
        if len(raw) > MAX_LINE_BYTES:
            read += 1
            rejected += 1
            writer.writerow([number, f"longer than {MAX_LINE_BYTES // 1024} KiB"])
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            if parse is None:
                raise CannotImport(
                    f"the header of {path.name} is not UTF-8 text."
                ) from None
            read += 1
            rejected += 1
            writer.writerow([number, "not UTF-8 text"])
            continue
        if not text.strip():
            continue
        if parse is None:
            header = _header(text, path)
            parse = _csv(header, check)
            continue
        read += 1
        try:
            line = parse(number, text)
        except InvalidInput as error:
            rejected += 1
            writer.writerow([number, str(error)])
            continue
        lines += 1
        run.append(_record(line))
        if len(run) >= RUN_LINES:
            runs.append(_spill(run, stack))
            run = []
    if fmt == "csv" and header is None:
        raise CannotImport(f"{path.name} is empty: a CSV file starts with a header.")
    if runs and run:
        runs.append(_spill(run, stack))
        run = []
    run.sort()
    return Sorted(digest.hexdigest(), read, rejected, lines, runs, run)


def _physical_lines(
    source: IO[bytes], digest: Any, path: Path
) -> Iterator[tuple[int, bytes, int]]:
    """Each line of `source` without its line break, numbered from 1, and
    its size in bytes; every byte is added to `digest`. A line longer than
    MAX_LINE_BYTES comes back as its first MAX_LINE_BYTES + 1 bytes: the
    rest is read and dropped."""
    number = 0
    try:
        while True:
            raw = source.readline(MAX_LINE_BYTES + 2)
            if not raw:
                return
            digest.update(raw)
            number += 1
            size = len(raw)
            if not raw.endswith(b"\n") and len(raw) > MAX_LINE_BYTES:
                rest = raw
                while rest and not rest.endswith(b"\n"):
                    rest = source.readline(1 << 20)
                    digest.update(rest)
                    size += len(rest)
            yield number, raw.rstrip(b"\r\n"), size
    except OSError as error:
        raise CannotImport(f"cannot read {path}: {error.strerror}.") from None


def _header(text: str, path: Path) -> list[str]:
    try:
        names = next(csv.reader([text], strict=True))
    except csv.Error as error:
        raise CannotImport(f"the header of {path.name} is not CSV: {error}.") from None
    names = [name.strip() for name in names]
    missing = [name for name in (EMAIL, PHONE_NUMBER) if name not in names]
    if missing:
        raise CannotImport(
            f"the header of {path.name} has no {' and no '.join(missing)} column"
            f" (it needs {EMAIL} and {PHONE_NUMBER}, and may have {CREATED_AT})."
        )
    return names


def _csv(header: list[str], check: Callable[[str], str]) -> Callable[[int, str], Line]:
    email_at, phone_at = header.index(EMAIL), header.index(PHONE_NUMBER)
    created_at = header.index(CREATED_AT) if CREATED_AT in header else None

    def parse(number: int, text: str) -> Line:
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as error:
            raise InvalidInput(f"not a CSV line: {error}") from None
        if len(fields) != len(header):
            raise InvalidInput(
                f"{len(fields)} fields where the header names {len(header)}"
            )
        time = fields[created_at].strip() if created_at is not None else ""
        return _checked(check, number, fields[email_at], fields[phone_at], time or None)

    return parse


def _ndjson(check: Callable[[str], str], number: int, text: str) -> Line:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"not JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise InvalidInput("not a JSON object")
    time = value.get(CREATED_AT)
    if time is not None and not isinstance(time, str):
        raise InvalidInput("createdAt must be a string or null")
    email, phone = value.get(EMAIL), value.get(PHONE_NUMBER)
    return _checked(check, number, email, phone, time or None)


def _checked(
    check: Callable[[str], str],
    number: int,
    email: Any,
    phone: Any,
    time: str | None,
) -> Line:
    trimmed = trim_email(email)
    phone_number = normalise_phone_number(phone)
    if trimmed is None and phone_number is None:
        raise InvalidInput("neither an email nor a phoneNumber")
    return Line(
        number,
        None if trimmed is None else check(trimmed),
        phone_number,
        None if time is None else parse_time(time),
    )


# Checking an email costs 40 µs; a shop's customers come back, and their
# orders are often near each other in its export.
_checked_email = lru_cache(maxsize=1 << 16)(check_email)


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp, in UTC. Raises InvalidInput."""
    if not _RFC3339.fullmatch(text.strip()):
        raise InvalidInput(
            "createdAt must be an RFC 3339 timestamp, such as"
            " 2024-05-01T12:30:00Z or 2024-05-01T14:30:00+02:00"
        )
    try:
        parsed = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("createdAt is not a date and time that exists") from None


def _record(line: Line) -> str:
    """The line as one text record whose order as a string is the order of
    application: createdAt (fixed width, UTC), then the line number; the
    values as JSON, whatever characters a blocked email holds."""
    time = (
        _NO_TIME
        if line.created_at is None
        else line.created_at.replace(tzinfo=None).isoformat(timespec="microseconds")
    )
    values = f"[{_json(line.email)}, {_json(line.phone_number)}]"
    return f"{time}\t{line.number:012d}\t{values}\n"


def _json(value: str | None) -> str:
    """`value` as json.dumps writes it (ASCII), without the encoder's setup
    for each line."""
    return "null" if value is None else encode_basestring_ascii(value)


def _line(record: str) -> Line:
    time, number, values = record.split("\t", 2)
    email, phone = json.loads(values)
    return Line(
        int(number),
        email,
        phone,
        None if time == _NO_TIME else datetime.fromisoformat(time + "+00:00"),
    )


def _spill(run: list[str], stack: ExitStack) -> IO[str]:
    """Sort `run` and write it to a temporary file, opened again for reading."""
    run.sort()
    spilled = stack.enter_context(
        tempfile.TemporaryFile("w+", encoding="utf-8", prefix="import-run-")
    )
    spilled.writelines(run)
    spilled.seek(0)
    return spilled
