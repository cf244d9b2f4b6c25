"""Log lines as JSON with emails and phone numbers masked: the app's own
(observability.py) and gunicorn's (gunicorn.conf.py: logger_class), which
quote refused requests. Kept apart from observability.py so that gunicorn's
master process can use it without loading the metrics."""

import json
import logging
import re
from datetime import datetime
from typing import Any

from flask import g, has_request_context
from gunicorn import glogging  # type: ignore[import-untyped]
from pythonjsonlogger.json import JsonFormatter

_EMAIL = re.compile(r"([^\s@\"'<>(),;:\[\]]+)@([^\s@\"'<>(),;:\[\]]+)")
# Numbers that are not personal data stay legible: source lines in
# tracebacks, ports, process ids, IPv4 addresses with their port, and
# gunicorn's version.
_LEGIBLE = (
    r"\b(?:line |port |pid:? ?)\d{1,7}\b"
    r"|\bListening at: \S+ \(\d{1,7}\)"
    r"|\bgunicorn \d{1,3}(?:\.\d{1,3}){1,2}\b"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b(?::\d{1,5}\b)?"
)
_DIGITS = re.compile(rf"(?P<legible>{_LEGIBLE})|\+?\d(?:[\d \-.()]*\d)?")


def mask(text: str) -> str:
    """`text` with every email shown as `d***@domain` and every run of four or
    more digits (a possible phone number) hidden but for its last four digits,
    or entirely when it is shorter than eight characters; but for the numbers
    of _LEGIBLE."""
    text = _EMAIL.sub(lambda m: f"{m[1][0]}***@{m[2]}", text)
    return _DIGITS.sub(_mask_digits, text)


def _mask_digits(match: re.Match[str]) -> str:
    digits = match[0]
    if match["legible"] or sum(c.isdigit() for c in digits) < 4:
        return digits
    if len(digits) < 8:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


def request_line(
    fields: dict[str, Any], *, at: datetime, request_id: str | None
) -> str:
    """The JSON line of one request (observability.py): time, level, request
    id, message and `fields`, every text value masked; the line
    MaskingJsonFormatter writes for an INFO record "request" with `fields`
    as extras, built without a record: the logging machinery and
    python-json-logger's walk over every attribute of the record cost three
    times as much as the line itself."""
    line: dict[str, Any] = {"time": at.isoformat(), "level": "INFO"}
    if request_id is not None:
        line["request_id"] = request_id
    line["message"] = "request"
    for key, value in fields.items():
        line[key] = mask(value) if isinstance(value, str) else value
    return json.dumps(line)


class MaskingJsonFormatter(JsonFormatter):
    """JSON log lines with the request id added and every text value masked."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        first = {"time": log_data.pop("time"), "level": log_data.pop("level")}
        if has_request_context() and "request_id" in g:
            first["request_id"] = g.request_id
        masked = {
            key: mask(value) if isinstance(value, str) else value
            for key, value in log_data.items()
        }
        return first | masked


def json_formatter() -> logging.Formatter:
    return MaskingJsonFormatter(
        ["levelname", "message"],
        rename_fields={"levelname": "level"},
        timestamp="time",
    )


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own messages (start, stop, refused requests, errors outside
    the app) as masked JSON lines, still on stderr: a refused request line or
    header is quoted in them."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())
