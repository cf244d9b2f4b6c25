"""`flask --app app contacts import`: a file of order lines ends exactly as
/identify taking the lines one by one in createdAt order, each row created at
its line's createdAt; bad lines are rejected one by one; a file imported
twice, or interrupted and run again, is applied once."""

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import importing
from conftest import ROOT, empty_database, gunicorn, migrate
from guard import Guard
from import_lines import read_sorted
from invariants import (
    assert_invariants,
    assert_ledger_explains,
    ledger_events,
    live_rows,
)
from live import free_port
from models import db
from reconcile import Limits
from reference_model import (
    EMAILS,
    PHONES,
    LimitedModel,
    ModelRow,
    ReferenceModel,
    examples,
)

BLOCKED_PHONE = "0000000"
# Far in the past: older than every row /identify creates during the test.
TIMES = [
    "2020-01-01T00:00:00Z",
    "2021-06-01T12:00:00+02:00",
    "2021-06-01T10:00:00Z",
    "2022-01-01T00:00:00Z",
]
NOW = datetime.max.replace(tzinfo=UTC)


class TimedModel(ReferenceModel):
    """The reference model with each row's createdAt: the primary is the
    oldest row (createdAt, then id); a new row older than the customer it
    joins becomes its primary. Records (event type, customer id)."""

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[int, datetime] = {}
        self.events: list[tuple[str, int]] = []

    def age(self, row_id: int) -> tuple[datetime, int]:
        return self.created[row_id], row_id

    def identify(  # type: ignore[override]
        self, email: str | None, phone: str | None, at: datetime = NOW
    ) -> dict[str, Any]:
        matched = [
            row
            for row in self.rows
            if (email is not None and row.email == email)
            or (phone is not None and row.phone == phone)
        ]
        primaries = sorted({row.linked_id or row.id for row in matched}, key=self.age)
        if not primaries:
            new = self.add_at(email, phone, None, at)
            self.events.append(("customer.created", new))
            return self.view(new)
        oldest, *newer = primaries
        if newer:
            self.merged.add((email, phone))  # type: ignore[arg-type]
            self.events += [("customer.merged", oldest)] * len(newer)
            for row in self.rows:
                if row.id in newer or row.linked_id in newer:
                    row.linked_id = oldest
        cluster = self.cluster(oldest)
        if (email is not None and email not in [r.email for r in cluster]) or (
            phone is not None and phone not in [r.phone for r in cluster]
        ):
            if at < self.created[oldest]:
                new = self.add_at(email, phone, None, at)
                for row in cluster:
                    row.linked_id = new
                self.events.append(("customer.created", new))
                self.events.append(("customer.primary_changed", new))
                return self.view(new)
            self.add_at(email, phone, oldest, at)
            self.events.append(("customer.contact_added", oldest))
        return self.view(oldest)

    def add_at(
        self, email: str | None, phone: str | None, linked: int | None, at: datetime
    ) -> int:
        new = self.add(email, phone, linked)
        self.created[new] = at
        return new

    def view(self, primary_id: int) -> dict[str, Any]:
        cluster = self.cluster(primary_id)
        ordered = sorted(cluster, key=lambda row: (row.id != primary_id, row.id))
        return {
            "primaryContactId": primary_id,
            "emails": list(dict.fromkeys(r.email for r in ordered if r.email)),
            "phoneNumbers": list(dict.fromkeys(r.phone for r in ordered if r.phone)),
            "secondaryContactIds": [r.id for r in ordered[1:]],
        }


class TimedLimitedModel(LimitedModel):
    """LimitedModel over a TimedModel; a refused pair records its event."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.model: TimedModel = TimedModel()

    def send(self, email: str | None, phone: str | None, at: datetime) -> None:
        trial = _copy(self.model)
        answer = trial.identify(email, phone, at)
        broken = None
        if email is not None and phone is not None:
            broken = self.breaks(trial, email, phone)
        if broken is None:
            self.model = trial
            return
        dropped = self.limits.priority[1]
        kept_email = None if dropped == "email" else email
        kept_phone = None if dropped == "phoneNumber" else phone
        answer = self.model.identify(kept_email, kept_phone, at)
        self.model.events.append(("customer.link_refused", answer["primaryContactId"]))


def _copy(model: TimedModel) -> TimedModel:
    copied = TimedModel()
    copied.rows = [ModelRow(r.id, r.email, r.phone, r.linked_id) for r in model.rows]
    copied.merged = set(model.merged)
    copied.next_id = model.next_id
    copied.created = dict(model.created)
    copied.events = list(model.events)
    return copied


def write_file(path: Path, fmt: str, lines: list[tuple[Any, Any, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(["orderId", "email", "phoneNumber", "createdAt"])
            for number, (email, phone, at) in enumerate(lines):
                writer.writerow([number, email or "", phone or "", at or ""])
        else:
            for email, phone, at in lines:
                out.write(
                    json.dumps({"email": email, "phoneNumber": phone, "createdAt": at})
                    + "\n"
                )


def run_import(app: Flask, path: Path, *extra: str) -> Any:
    return app.test_cli_runner().invoke(
        args=["contacts", "import", str(path), *extra], catch_exceptions=False
    )


def table(app: Flask) -> tuple[list[Any], list[Any]]:
    """The live rows and the ledger's events."""
    with app.app_context():
        session = db.session()
        return live_rows(session), ledger_events(session)


def views(app: Flask) -> list[dict[str, Any]]:
    """Every customer's view, ascending primary id."""
    rows, _ = table(app)
    client = app.test_client()
    primaries = sorted({row.id for row in rows if row.linked_id is None})
    found = []
    for primary in primaries:
        view = client.get(f"/customers/{primary}").get_json()["contact"]
        view.pop("primaryContatctId")
        found.append(view)
    return found


line_strategy = st.tuples(
    st.none() | st.sampled_from(EMAILS),
    st.none() | st.sampled_from([*PHONES, BLOCKED_PHONE]),
    st.none() | st.sampled_from(TIMES),
).filter(lambda line: line[:2] != (None, None))


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=st.lists(
        st.tuples(st.sampled_from(EMAILS), st.sampled_from(PHONES)),
        min_size=1,
        max_size=4,
    ),
    lines=st.lists(line_strategy, min_size=1, max_size=14),
    fmt=st.sampled_from(["csv", "ndjson"]),
    batch=st.integers(1, 5),
    max_values=st.integers(2, 6),
    max_partners=st.integers(1, 3),
)
def test_an_import_ends_as_identify_taking_its_lines_in_created_at_order(
    app: Flask,
    tmp_path: Path,
    before: list[tuple[str, str]],
    lines: list[tuple[str | None, str | None, str | None]],
    fmt: str,
    batch: int,
    max_values: int,
    max_partners: int,
) -> None:
    with app.app_context():
        empty_database()
    limits = Limits(max_values, max_partners)
    app.config["GUARD"] = Guard(builtin=True, limits=limits)
    model = TimedLimitedModel(limits)
    client = app.test_client()
    for email, phone in before:
        assert (
            client.post(
                "/identify", json={"email": email, "phoneNumber": phone}
            ).status_code
            == 200
        )
        model.send(email, phone, NOW.replace(year=9000))
    path = tmp_path / f"orders.{fmt}"
    write_file(path, fmt, lines)

    result = run_import(app, path, "--batch-size", str(batch))

    assert result.exit_code == 0, result.output
    order = sorted(
        range(len(lines)),
        key=lambda i: (lines[i][2] is None, _utc(lines[i][2]), i),
    )
    for index in order:
        email, phone, at = lines[index]
        phone = None if phone == BLOCKED_PHONE else phone
        if email is None and phone is None:
            continue
        model.send(email, phone, NOW if at is None else _utc(at))
    expected = [
        model.model.view(primary)
        for primary in sorted({r.linked_id or r.id for r in model.model.rows})
    ]
    assert views(app) == expected
    rows, events = table(app)
    assert [(event.type, event.customer_id) for event in events] == model.model.events
    assert_invariants(rows)
    assert_ledger_explains(rows, events)
    again = run_import(app, path, "--batch-size", str(batch))
    assert again.exit_code == 0, again.output
    assert table(app) == (rows, events)


def _utc(text: str | None) -> datetime:
    if text is None:
        return NOW
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_a_line_older_than_a_customers_primary_becomes_its_primary(
    app: Flask, tmp_path: Path
) -> None:
    client = app.test_client()
    client.post(
        "/identify", json={"email": "doc@fluxkart.com", "phoneNumber": "123456"}
    )
    path = tmp_path / "history.csv"
    write_file(path, "csv", [("emmett@hillvalley.edu", "123456", TIMES[0])])

    result = run_import(app, path)

    assert result.exit_code == 0, result.output
    assert client.post("/customers/lookup", json={"phoneNumber": "123456"}).get_json()[
        "contacts"
    ] == [
        {
            "primaryContactId": 2,
            "primaryContatctId": 2,
            "emails": ["emmett@hillvalley.edu", "doc@fluxkart.com"],
            "phoneNumbers": ["123456"],
            "secondaryContactIds": [1],
        }
    ]
    history = client.get("/customers/2/history").get_json()["events"]
    assert [(e["type"], e["customerId"], e["requestId"]) for e in history] == [
        ("customer.created", 1, history[0]["requestId"]),
        ("customer.created", 2, None),
        ("customer.primary_changed", 2, None),
    ]
    assert history[2]["previousCustomerId"] == 1
    assert history[2]["contactIds"] == [1]


def rows_and_events(app: Flask) -> tuple[int, int, int]:
    with app.app_context():
        session = db.session()
        return (
            session.execute(text("SELECT count(*) FROM contact")).scalar_one(),
            session.execute(text("SELECT count(*) FROM event")).scalar_one(),
            session.execute(text("SELECT count(*) FROM imported_file")).scalar_one(),
        )


def rejects_of(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as rejected:
        return list(csv.reader(rejected))


def test_bad_csv_lines_are_rejected_with_their_number_and_reason_and_the_rest_imported(
    app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(
        b"email,phoneNumber,createdAt\n"
        b"lorraine@hillvalley.edu,123456,2024-01-01T10:00:00Z\n"
        b"not-an-email,919191,\n"
        b"george@hillvalley.edu,12ab,\n"
        b"biff@hillvalley.edu,717171,yesterday\n"
        b"only-two,fields\n"
        b"caf\xe9@hillvalley.edu,5550000,\n"
        + b"x"
        * (64 * 1024 + 10)
        + b"@hillvalley.edu,5551111,\n"
        b",,2024-01-01T10:00:00Z\n"
        b"mcfly@hillvalley.edu,123456,2024-02-30T00:00:00Z\n"
        b"mcfly@hillvalley.edu,123456,2024-01-02T10:00:00Z\n"
    )

    result = run_import(app, path)

    assert result.exit_code == 0, result.output
    rejected = rejects_of(tmp_path / "orders.csv.rejects.csv")
    assert rejected[0] == ["line", "reason"]
    reasons = {int(number): reason for number, reason in rejected[1:]}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert "email is not a valid address" in reasons[3]
    assert "phoneNumber must hold 4 to 15 digits" in reasons[4]
    assert "RFC 3339" in reasons[5]
    assert reasons[6] == "2 fields where the header names 3"
    assert reasons[7] == "not UTF-8 text"
    assert reasons[8] == "longer than 64 KiB"
    assert reasons[9] == "neither an email nor a phoneNumber"
    assert reasons[10] == "createdAt is not a date and time that exists"
    for reason in reasons.values():
        assert "hillvalley" not in reason and "717171" not in reason
    assert views(app) == [
        {
            "primaryContactId": 1,
            "emails": ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
            "phoneNumbers": ["123456"],
            "secondaryContactIds": [2],
        }
    ]
    assert (tmp_path / "orders.csv.rejects.csv").stat().st_mode & 0o777 == 0o600
    assert "importing: 2 of 2 lines" in result.stderr
    (logged,) = [
        json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")
    ]
    assert logged["message"] == "import"
    assert (logged["read"], logged["rejected"], logged["customers_created"]) == (
        10,
        8,
        1,
    )
    assert "hillvalley" not in result.stderr and "123456" not in result.stderr
    assert "rejected" in result.stdout


def test_bad_ndjson_lines_are_rejected_and_the_rest_imported(
    app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "orders.ndjson"
    path.write_text(
        '{"email": "doc@fluxkart.com", "phoneNumber": 123456}\n'
        "{not json\n"
        '["doc@fluxkart.com"]\n'
        '{"email": 5}\n'
        '{"email": "marty@hillvalley.edu", "createdAt": 20240101}\n'
        '{"phoneNumber": true}\n'
        '{"email": "emmett@hillvalley.edu", "phoneNumber": "123456"}\n'
    )
    rejects = tmp_path / "bad.csv"

    result = run_import(app, path, "--rejects", str(rejects))

    assert result.exit_code == 0, result.output
    assert [number for number, _ in rejects_of(rejects)[1:]] == [
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    assert views(app) == [
        {
            "primaryContactId": 1,
            "emails": ["doc@fluxkart.com", "emmett@hillvalley.edu"],
            "phoneNumbers": ["123456"],
            "secondaryContactIds": [2],
        }
    ]


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("missing.csv", None, (), "cannot read"),
        ("orders.txt", b"email,phoneNumber\n", (), "--format"),
        (
            "orders.csv",
            b"mail,phone\na@b.co,123456\n",
            (),
            "no email and no phoneNumber",
        ),
        ("orders.csv", b"", (), "is empty"),
        ("orders.csv", b"\xff\xfe,email\n", (), "not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_imported_stops_with_one_line_and_stores_nothing(
    app: Flask,
    tmp_path: Path,
    name: str,
    content: bytes | None,
    extra: tuple[str, ...],
    message: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    result = run_import(app, path, *extra)

    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1
    assert rows_and_events(app) == (0, 0, 0)
    assert not (tmp_path / f"{name}.rejects.csv").exists()


def test_an_unknown_format_option_is_refused_and_stores_nothing(
    app: Flask, tmp_path: Path
) -> None:
    path = tmp_path / "orders.txt"
    path.write_text("email,phoneNumber\na@b.co,123456\n")

    result = run_import(app, path, "--format", "xml")

    assert result.exit_code != 0
    assert rows_and_events(app) == (0, 0, 0)


def test_importing_a_file_twice_changes_nothing_the_second_time(
    app: Flask, tmp_path: Path
) -> None:
    """Refused links append an event each time /identify sees them: only the
    file's recorded progress keeps a second run from appending them again."""
    app.config["GUARD"] = Guard(builtin=True, limits=Limits(max_partners=1))
    path = tmp_path / "orders.csv"
    write_file(
        path,
        "csv",
        [
            ("a@shop.com", "5550001", TIMES[0]),
            ("a@shop.com", "5550002", TIMES[1]),
            ("b@shop.com", "5550001", None),
        ],
    )
    run_import(app, path, "--batch-size", "2")
    first = table(app)

    result = run_import(app, path, "--batch-size", "2")

    assert result.exit_code == 0
    assert table(app) == first
    assert [event.type for event in first[1]].count("customer.link_refused") == 2
    assert "imported by an earlier run" in result.output


def test_a_batch_is_decided_from_what_another_writer_committed_after_the_batch_before(
    app: Flask, tmp_path: Path
) -> None:
    """Between two batches /identify merges the two customers the first one
    created: the second batch's line joins the merged customer, not the one
    merged into it (on SQLite a batch starts from the clusters the batch
    before left only while no other connection commits)."""
    path = tmp_path / "orders.csv"
    write_file(
        path,
        "csv",
        [
            ("a@shop.com", "5550001", TIMES[0]),
            ("b@shop.com", "5550002", TIMES[0]),
            ("b@shop.com", "5550003", TIMES[3]),
        ],
    )
    client = app.test_client()
    batches = []

    def done(count: int) -> None:
        batches.append(count)
        if len(batches) == 2:
            merge = {"email": "a@shop.com", "phoneNumber": "5550002"}
            assert client.post("/identify", json=merge).status_code == 200

    with app.app_context(), ExitStack() as stack:
        lines = read_sorted(path, "csv", io.StringIO(), stack)
        with db.engine.connect() as connection:
            importing.import_sorted(
                connection, lines, guard=app.config["GUARD"], batch_size=2, done=done
            )

    assert batches == [0, 2, 1]
    rows, events = table(app)
    assert_invariants(rows)
    assert_ledger_explains(rows, events)
    assert views(app) == [
        {
            "primaryContactId": 1,
            "emails": ["a@shop.com", "b@shop.com"],
            "phoneNumbers": ["5550001", "5550002", "5550003"],
            "secondaryContactIds": [2, 3],
        }
    ]


def order_lines(count: int, seed: int) -> list[tuple[str, str, str]]:
    """`count` order lines of customers with 1 to 5 orders, some sharing a
    phone with another customer (joined later), each with its createdAt."""
    chooser = random.Random(seed)
    lines = []
    customer = 0
    while len(lines) < count:
        customer += 1
        phone = f"555{customer:07d}"
        if customer > 10 and chooser.random() < 0.2:
            phone = f"555{chooser.randrange(1, customer):07d}"
        for _ in range(chooser.randint(1, 5)):
            email = f"c{customer}.{chooser.randint(1, 2)}@shop.example.org"
            moment = datetime(2020, 1, 1, tzinfo=UTC).timestamp() + chooser.randrange(
                10**8
            )
            at = datetime.fromtimestamp(moment, UTC).isoformat()
            lines.append((email, phone, at))
    return lines[:count]


def shape(app: Flask) -> tuple[list[Any], Counter[str]]:
    """The customers by their values, and the events by type: what an import
    leaves whatever ids the database drew."""
    customers = sorted(
        (sorted(view["emails"]), sorted(view["phoneNumbers"]), view["emails"][:1])
        for view in views(app)
    )
    _, events = table(app)
    return customers, Counter(event.type for event in events)


def applied_lines(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT applied FROM imported_file"))
            return int(found.scalar() or 0)
    finally:
        engine.dispose()


def start_import(database_url: str, path: Path, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "contacts", "import"]
        + [str(path), "--batch-size", str(batch)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_an_import_stopped_midway_and_run_again_ends_as_one_uninterrupted_run(
    app: Flask, database_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    lines = order_lines(6000, seed=7)
    path = tmp_path / "orders.csv"
    write_file(path, "csv", lines)
    process = start_import(database_url, path, batch=2)
    deadline = time.monotonic() + 60
    while applied_lines(database_url) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    stopped_at = applied_lines(database_url)
    rows, events = table(app)
    assert 0 < stopped_at < len(lines)
    assert_invariants(rows)
    assert_ledger_explains(rows, events)
    if stop != signal.SIGKILL:
        assert process.returncode == 1
        assert "Run the same command again" in stderr

    again = start_import(database_url, path, batch=500)
    output, _ = again.communicate(timeout=120)

    assert again.returncode == 0, output
    assert applied_lines(database_url) == len(lines)
    resumed = shape(app)
    rows, events = table(app)
    assert_invariants(rows)
    assert_ledger_explains(rows, events)
    with app.app_context():
        empty_database()
    assert run_import(app, path, "--batch-size", "500").exit_code == 0
    assert resumed == shape(app)


def test_an_import_beside_live_requests_keeps_every_invariant_and_answers_them_all(
    database_url: str, tmp_path: Path
) -> None:
    """Live requests on the same customers as the import's lines, from several
    threads, through real gunicorn workers, while the import runs in its own
    process: every request answered 200, every invariant kept, the ledger
    explains the table."""
    migrate(database_url)
    lines = order_lines(3000, seed=11)
    path = tmp_path / "orders.csv"
    write_file(path, "csv", lines)
    statuses: list[int] = []
    with gunicorn(database_url, free_port(), workers=2) as base_url:
        process = start_import(database_url, path, batch=200)
        stop = threading.Event()

        def client(seed: int) -> None:
            chooser = random.Random(seed)
            with requests.Session() as session:
                while not stop.is_set():
                    email, phone, _ = chooser.choice(lines)
                    if chooser.random() < 0.3:
                        email = f"live{chooser.randrange(50)}@shop.example.org"
                    answer = session.post(
                        f"{base_url}/identify",
                        json={"email": email, "phoneNumber": phone},
                        timeout=60,
                    )
                    statuses.append(answer.status_code)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        try:
            output, errors = process.communicate(timeout=300)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    assert process.returncode == 0, errors
    assert applied_lines(database_url) == len(lines)
    assert statuses and set(statuses) == {200}
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = live_rows(connection)
        assert_invariants(rows)
        assert_ledger_explains(rows, ledger_events(connection))
    engine.dispose()


def test_two_runs_of_one_file_at_once_apply_it_once(
    app: Flask, database_url: str, tmp_path: Path
) -> None:
    lines = order_lines(600, seed=5)
    path = tmp_path / "orders.csv"
    write_file(path, "csv", lines)

    runs = [start_import(database_url, path, batch=20) for _ in range(2)]
    outcomes = [run.communicate(timeout=120) for run in runs]

    codes = sorted(run.returncode for run in runs)
    assert codes in ([0, 0], [0, 1]), outcomes
    if codes == [0, 1]:
        assert any("another import of the same file" in err for _, err in outcomes)
    assert run_import(app, path).exit_code == 0
    assert applied_lines(database_url) == len(lines)
    imported = shape(app)
    rows, events = table(app)
    assert_invariants(rows)
    assert_ledger_explains(rows, events)
    with app.app_context():
        empty_database()
    assert run_import(app, path).exit_code == 0
    assert shape(app) == imported
