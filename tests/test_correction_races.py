"""Detach and erase racing identify: real parallel requests against real
gunicorn worker processes, one instance of 4 workers on a SQLite file, or two
instances on one PostgreSQL database (test_concurrency.instances). Afterwards
the table's invariants hold, the ledger replays to the table, and every answer
of a request that wrote is checked against the ledger at its commit."""

import itertools
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import Connection, create_engine, select, text

import correct
import writes
from conftest import empty_tables
from engines import only_on
from invariants import (
    LedgerEvent,
    assert_invariants,
    assert_ledger_explains_the_table,
    ledger,
    replay_event,
    table,
)
from live import FeedReader, instances, retries, run_threads
from models import IDLE_IN_TRANSACTION_TIMEOUT, Contact, Event, engine_options
from reads import CustomerRows
from reconcile import PHONE_NUMBER

# Limits far above what a test reaches: the races under test are between
# identify and the corrections, not the protection against over-merging.
ENVIRONMENT = {
    "ERASURE_KEY": "correction-races-erasure-key",
    "MAX_PARTNERS_PER_VALUE": "1000",
    "MAX_VALUES_PER_CUSTOMER": "1000",
}
THREADS = 12


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """The instances of one engine, started once for every test here."""
    directory = tmp_path_factory.mktemp("correction-races")
    with instances(request, directory, ENVIRONMENT) as served:
        yield served


@pytest.fixture
def service(running: tuple[str, list[str]]) -> tuple[str, list[str]]:
    """The running instances, on empty tables (ids from 1 again)."""
    url, _ = running
    engine = create_engine(url)
    with engine.begin() as connection:
        empty_tables(connection)
    engine.dispose()
    return running


@dataclass(frozen=True)
class Sent:
    """One request as it was sent, with an X-Request-ID of its own, and the
    answer it got."""

    request_id: str
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    answer: dict[str, Any]

    @property
    def kind(self) -> str:
        if self.path == "/identify":
            return "identify"
        if self.path.endswith("/detach"):
            return "detach"
        if self.method == "DELETE" and self.path.startswith("/customers/"):
            return "erase"
        return "other"

    def customers(self) -> list[dict[str, Any]]:
        """The customers the answer describes (none for an erase)."""
        if self.kind == "identify":
            return [self.answer["contact"]]
        return list(self.answer.get("contacts", []))


class Client:
    """Sends requests to the instances in turn and keeps every request and
    answer. A 5xx, or a 4xx that is not a problem document, fails the test."""

    def __init__(self, base_urls: list[str]) -> None:
        self.base_urls = base_urls
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.turn = itertools.count()

    def send(
        self,
        http: requests.Session,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        base_url: str | None = None,
    ) -> Sent:
        base_url = base_url or self.base_urls[next(self.turn) % len(self.base_urls)]
        request_id = str(uuid.uuid4())
        response = http.request(
            method,
            f"{base_url}{path}",
            json=body,
            headers={"X-Request-ID": request_id},
            timeout=60,
        )
        answer = response.json() if response.content else {}
        sent = Sent(request_id, method, path, body, response.status_code, answer)
        with self.lock:
            self.sent.append(sent)
        assert response.status_code < 500, f"{method} {path} {body}: {answer}"
        assert response.headers["X-Request-ID"] == request_id
        if response.status_code >= 400:
            assert response.headers["Content-Type"].startswith(
                "application/problem+json"
            ), answer
        return sent

    def identify(
        self, http: requests.Session, email: str | None, phone: str | None
    ) -> Sent:
        body = {"email": email, "phoneNumber": phone}
        return self.send(http, "POST", "/identify", body)

    def lookup(self, http: requests.Session, field: str, value: str) -> Sent:
        return self.send(http, "POST", "/customers/lookup", {field: value})

    def detach(
        self, http: requests.Session, contact_id: int, body: dict[str, Any]
    ) -> Sent:
        return self.send(http, "POST", f"/customers/{contact_id}/detach", body)

    def erase(self, http: requests.Session, contact_id: int, suppress: bool) -> Sent:
        flag = "true" if suppress else "false"
        return self.send(http, "DELETE", f"/customers/{contact_id}?suppress={flag}")

    def of_kind(self, kind: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.kind == kind]


def engine_name(url: str) -> str:
    return url.split(":")[0].split("+")[0]


def members(customer_of: dict[int, int], customer_id: int) -> list[int]:
    return sorted(row for row, owner in customer_of.items() if owner == customer_id)


def assert_answers_describe_customers_at_commit(
    sent: list[Sent], events: list[LedgerEvent]
) -> int:
    """Replay the ledger one event at a time. Right after the last event of a
    request that wrote (its events are contiguous and their ids follow commit
    order, so the replay then is the table as that request committed it),
    every customer its answer names has exactly the rows the answer gives it;
    an erase's erasedContactIds are the rows its customer had just before its
    event. Every detach and erase answered 200 wrote an event. Returns how many
    answers were checked."""
    writes = {
        s.request_id: s
        for s in sent
        if s.status == 200 and s.kind in {"identify", "detach", "erase"}
    }
    last = {event.request_id: n for n, event in enumerate(events)}
    corrections = {r for r, s in writes.items() if s.kind != "identify"}
    assert corrections <= set(last), "a detach or an erase wrote no event"
    customer_of: dict[int, int] = {}
    checked = 0
    for position, event in enumerate(events):
        request = writes.get(event.request_id or "")
        if request is not None and event.type == "customer.erased":
            before = members(customer_of, event.customer_id)
            assert request.answer["erasedContactIds"] == before, request
        replay_event(customer_of, event)
        if request is None or last[event.request_id] != position:
            continue
        for customer in request.customers():
            primary = customer["primaryContactId"]
            answered = sorted([primary, *customer["secondaryContactIds"]])
            assert answered == members(customer_of, primary), (request, event)
        checked += 1
    return checked


def assert_detach_answer_consistent(
    answer: dict[str, Any], value: str, created: dict[int, Any]
) -> None:
    """The customers of a detach answer: ascending primaries, disjoint rows,
    ascending secondaries, none holding the value; each primary is the oldest
    of its rows (checked on the rows still in the table at the end: `created`
    maps their ids to (created_at, id); a row's creation never changes)."""
    primaries = [customer["primaryContactId"] for customer in answer["contacts"]]
    assert primaries == sorted(set(primaries)), answer
    seen: set[int] = set()
    for customer in answer["contacts"]:
        primary, secondaries = (
            customer["primaryContactId"],
            customer["secondaryContactIds"],
        )
        assert secondaries == sorted(secondaries), answer
        ids = {primary, *secondaries}
        assert not ids & seen, answer
        seen |= ids
        assert value not in customer["emails"] + customer["phoneNumbers"], answer
        kept = [created[row] for row in ids if row in created]
        if primary in created:
            assert created[primary] == min(kept), answer


def creation_of_rows(url: str) -> dict[int, Any]:
    return {row.id: (row.created_at, row.id) for row in table(url)}


def events_of(events: list[LedgerEvent], request_id: str) -> list[int]:
    """The positions in the ledger of a request's events."""
    return [n for n, event in enumerate(events) if event.request_id == request_id]


def sessions(
    work: Callable[[Client, requests.Session, int], None], client: Client, count: int
) -> list[Callable[[], None]]:
    """`count` thread targets, each running `work` with a session of its own."""

    def target(n: int) -> None:
        with requests.Session() as http:
            work(client, http, n)

    return [lambda n=n: target(n) for n in range(count)]


def test_detaches_racing_identifies_into_the_same_customer_keep_every_invariant(
    service: tuple[str, list[str]],
) -> None:
    """A customer whose rows are joined through one phone (emails sharing it,
    and customers merged into it: the merge events are evidence) gets new
    emails with that phone, merges of other customers (an older one, which
    then absorbs it, and a younger one) and lookups from many threads, while
    other threads detach the phone from it, with and without blocking it,
    unblock it and link it again."""
    url, base_urls = service
    client = Client(base_urls)
    phone = "5550100"
    emails = [f"a{n}@shop.com" for n in range(4)]
    with requests.Session() as http:
        client.identify(http, "older@shop.com", "5551001")
        for email in emails:
            client.identify(http, email, phone)
        client.identify(http, "x@shop.com", "5551009")
        client.identify(http, emails[1], "5551009")
        client.identify(http, "d@shop.com", "5551008")
        client.identify(http, "d@shop.com", phone)
        client.identify(http, "younger@shop.com", "5551002")
    before = retries(base_urls)
    detached: list[Sent] = []

    def add(client: Client, http: requests.Session, n: int) -> None:
        for i in range(10):
            if i % 4 == 3:
                sent = client.identify(http, None, phone)
                assert sent.status in {200, 422}, sent
            else:
                sent = client.identify(http, f"n{n}-{i}@shop.com", phone)
                assert sent.status == 200, sent

    def merge(client: Client, http: requests.Session, n: int) -> None:
        rng = random.Random(n)
        others = ["older@shop.com", "younger@shop.com", "x@shop.com", *emails]
        for _ in range(8):
            assert client.identify(http, rng.choice(others), phone).status == 200

    def read(client: Client, http: requests.Session, n: int) -> None:
        for _ in range(8):
            assert client.lookup(http, "phoneNumber", phone).status in {200, 422}
            assert client.send(http, "GET", "/customers/2").status == 200

    def detach(client: Client, http: requests.Session, n: int) -> None:
        rng = random.Random(100 + n)
        for i in range(8):
            found = client.lookup(http, "phoneNumber", phone)
            if found.status == 200 and found.answer["contacts"]:
                customer = rng.choice(found.answer["contacts"])
                target = rng.choice(
                    [customer["primaryContactId"], *customer["secondaryContactIds"]]
                )
                block = i % 2 == 1
                body = {"phoneNumber": phone, "block": block}
                sent = client.detach(http, target, body)
                assert sent.status in {200, 404, 422}, sent
                if sent.status == 200:
                    detached.append(sent)
                if block:
                    unblock(client, http, phone)
            assert client.identify(http, rng.choice(emails), phone).status == 200

    def unblock(client: Client, http: requests.Session, value: str) -> None:
        listed = client.send(http, "GET", "/blocked-values").answer["blockedValues"]
        for blocked in listed:
            if blocked.get("value") == value:
                status = client.send(
                    http, "DELETE", f"/blocked-values/{blocked['id']}"
                ).status
                assert status in {204, 404}

    run_threads(
        sessions(add, client, 4)
        + sessions(merge, client, 3)
        + sessions(read, client, 2)
        + sessions(detach, client, 3)
    )

    rows = table(url)
    assert_invariants(rows, detached=True)
    assert_ledger_explains_the_table(url)
    events = ledger(url)
    checked = assert_answers_describe_customers_at_commit(client.sent, events)
    assert detached, "no detach succeeded"
    created = creation_of_rows(url)
    for sent in detached:
        assert_detach_answer_consistent(sent.answer, phone, created)
    splits = sum(event.type == "customer.split" for event in events)
    print(
        f"\ndetach race ({engine_name(url)}): {len(client.sent)} requests"
        f" from {THREADS} threads,"
        f" {len(detached)} detaches, {len(rows)} rows, {len(events)} events"
        f" ({splits} splits), {checked} answers checked against the ledger,"
        f" {retries(base_urls) - before} retries"
    )


def test_an_erasure_racing_identifies_into_its_customer_leaves_nothing_of_it(
    service: tuple[str, list[str]],
) -> None:
    """Three customers, each joined through its phone, keep getting new rows
    (new emails with the phone) from many threads; meanwhile each is erased
    with suppress. No row of the erased customer remains, no event holds one
    of its values, and exactly the identifies that committed after the
    erasure answered that the phone was ignored as suppressed."""
    url, base_urls = service
    client = Client(base_urls)
    phones = [f"555020{k}" for k in range(3)]
    with requests.Session() as http:
        seeds = [
            client.identify(http, f"s{k}@shop.com", phone).answer["contact"]
            for k, phone in enumerate(phones)
        ]
    before = retries(base_urls)
    sent_for = [threading.Semaphore(0) for _ in phones]
    erasures: dict[int, Sent] = {}

    def add(client: Client, http: requests.Session, n: int) -> None:
        for i in range(12):
            k = (n + i) % len(phones)
            sent = client.identify(http, f"e{n}-{i}@shop.com", phones[k])
            assert sent.status == 200, sent
            sent_for[k].release()

    def erase(client: Client, http: requests.Session, k: int) -> None:
        for _ in range(4 + 6 * k):
            sent_for[k].acquire()
        erasures[k] = client.erase(http, seeds[k]["primaryContactId"], suppress=True)

    run_threads(
        sessions(add, client, THREADS - len(phones)) + sessions(erase, client, 3)
    )

    rows = table(url)
    assert_invariants(rows)
    assert_ledger_explains_the_table(url)
    events = ledger(url)
    checked = assert_answers_describe_customers_at_commit(client.sent, events)
    by_request = {sent.request_id: sent for sent in client.sent}
    created_by = {
        event.contact_ids[0]: by_request[event.request_id or ""]
        for event in events
        if event.type in {"customer.created", "customer.contact_added"}
    }
    engine = create_engine(url)
    erased_rows = 0
    for k, phone in enumerate(phones):
        erasure = erasures[k]
        assert erasure.status == 200, erasure
        erased = erasure.answer["erasedContactIds"]
        values = {
            (field, created_by[row].body[field])
            for row in erased
            for field in ("email", "phoneNumber")
            if created_by[row].body[field] is not None
        }
        assert erasure.answer["suppressed"] == len(values)
        assert ("phoneNumber", phone) in values
        erased_rows += len(erased)
        with engine.connect() as connection:
            assert not still_holding(connection, erased, values)
        (erased_at,) = events_of(events, erasure.request_id)
        for sent in client.of_kind("identify"):
            if sent.body is None or sent.body["phoneNumber"] != phone:
                continue
            positions = events_of(events, sent.request_id)
            assert positions, f"{sent} wrote nothing"
            if positions[0] > erased_at:
                assert sent.answer["ignored"] == [
                    {"field": "phoneNumber", "reason": "suppressed"}
                ], sent
                assert sent.answer["contact"]["phoneNumbers"] == []
            else:
                assert "ignored" not in sent.answer, sent
                new_row = events[positions[-1]].contact_ids[0]
                assert new_row in erased, sent
    engine.dispose()
    print(
        f"\nerase race ({engine_name(url)}): {len(client.sent)} requests"
        f" from {THREADS} threads,"
        f" 3 erasures of {erased_rows} rows, {len(rows)} rows left,"
        f" {len(events)} events, {checked} answers checked against the ledger,"
        f" {retries(base_urls) - before} retries"
    )


def still_holding(
    connection: Connection, row_ids: list[int], values: set[tuple[str, str]]
) -> list[Any]:
    """Rows with one of those ids (live or soft-deleted), and rows and events
    holding one of those values."""
    emails = [value for field, value in values if field == "email"]
    phones = [value for field, value in values if field == "phoneNumber"]
    rows = select(Contact.id).where(
        Contact.id.in_(row_ids)
        | Contact.email.in_(emails)
        | Contact.phone_number.in_(phones)
    )
    events = select(Event.id).where(
        Event.email.in_(emails) | Event.phone_number.in_(phones)
    )
    return [*connection.execute(rows), *connection.execute(events)]


def test_every_answer_describes_its_customer_as_it_was_when_the_request_committed(
    service: tuple[str, list[str]],
) -> None:
    """Random identifies over a small pool of emails and phones, detaches of
    a value from the customer a lookup found it in, erasures of such a
    customer and lookups, from many threads, while a reader pages the feed.
    Replaying the ledger event by event, each answer of a request that wrote
    names exactly the rows its customers had when it committed."""
    url, base_urls = service
    client = Client(base_urls)
    pool = [("email", f"p{n}@shop.com") for n in range(8)] + [
        ("phoneNumber", f"55503{n:02d}") for n in range(8)
    ]
    before = retries(base_urls)

    def work(client: Client, http: requests.Session, n: int) -> None:
        rng = random.Random(200 + n)
        for _ in range(15):
            draw = rng.random()
            if draw < 0.65:
                email = rng.choice([value for field, value in pool[:8]] + [None])
                phone = rng.choice([value for field, value in pool[8:]])
                assert client.identify(http, email, phone).status == 200
                continue
            field, value = rng.choice(pool)
            found = client.lookup(http, field, value)
            assert found.status == 200, found
            if draw > 0.95 or not found.answer["contacts"]:
                continue
            (customer,) = found.answer["contacts"]
            target = rng.choice(
                [customer["primaryContactId"], *customer["secondaryContactIds"]]
            )
            if draw < 0.85:
                sent = client.detach(http, target, {field: value})
                assert sent.status in {200, 404, 422}, sent
            else:
                assert client.erase(http, target, suppress=False).status in {200, 404}

    with FeedReader(base_urls[-1]) as reader:
        run_threads(sessions(work, client, THREADS))

    rows = table(url)
    assert_invariants(rows, detached=True)
    assert_ledger_explains_the_table(url)
    events = ledger(url)
    assert reader.seen == [event.id for event in events], "the feed missed events"
    checked = assert_answers_describe_customers_at_commit(client.sent, events)
    done = {
        kind: sum(s.status == 200 for s in client.of_kind(kind))
        for kind in ("identify", "detach", "erase")
    }
    assert done["detach"] and done["erase"], done
    print(
        f"\nanswers at commit ({engine_name(url)}): {len(client.sent)} requests"
        f" from {THREADS} threads"
        f" ({done['identify']} identifies, {done['detach']} detaches,"
        f" {done['erase']} erasures answered 200), {len(rows)} rows,"
        f" {len(events)} events, {checked} answers checked against the ledger,"
        f" {retries(base_urls) - before} retries"
    )


def blocked_by(observer: Connection, pid: int) -> list[int]:
    """PostgreSQL: the server processes waiting for a lock that `pid` holds
    or waits for ahead of them."""
    query = text(
        "SELECT pid FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
    )
    return list(observer.execute(query, {"pid": pid}).scalars())


IDLE_MS = round(IDLE_IN_TRANSACTION_TIMEOUT * 1000)


def wait_for(condition: Callable[[], list[int]], what: str) -> list[int]:
    deadline = time.monotonic() + 30
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return found


@only_on("postgresql", "running")
def test_a_detach_waiting_while_its_customer_merges_into_an_older_one_follows_it(
    service: tuple[str, list[str]],
) -> None:
    """PostgreSQL: another transaction holds the row lock of customer C's
    primary. A merge of C into the older customer B (one instance) queues for
    it, then a detach of C's phone (the other instance) queues behind the
    merge. When the lock is released the merge commits first; the detach,
    granted C's lock, finds C inside B, locks B too and detaches the phone
    from the merged customer, in the same transaction, with no retry."""
    url, base_urls = service
    client = Client(base_urls)
    phone = "5550400"
    with requests.Session() as http:
        older = client.identify(http, "b@shop.com", "5550401").answer["contact"]
        first = client.identify(http, "c1@shop.com", phone).answer["contact"]
        second = client.identify(http, "c2@shop.com", phone).answer["contact"]
    b, c = older["primaryContactId"], first["primaryContactId"]
    c2 = second["secondaryContactIds"][0]
    before = retries(base_urls)
    answers: dict[str, Sent] = {}

    def send(name: str, method: str, path: str, body: dict[str, Any], n: int) -> None:
        with requests.Session() as http:
            answers[name] = client.send(http, method, path, body, base_urls[n])

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as holder, engine.connect() as observer:
        holder.exec_driver_sql("BEGIN")
        holder.execute(select(Contact.id).where(Contact.id == c).with_for_update())
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        merge = threading.Thread(
            target=send,
            args=(
                "merge",
                "POST",
                "/identify",
                {"email": "b@shop.com", "phoneNumber": phone},
                1,
            ),
        )
        merge.start()
        (merging,) = wait_for(
            lambda: blocked_by(observer, holder_pid), "no merge waited"
        )
        detach = threading.Thread(
            target=send,
            args=(
                "detach",
                "POST",
                f"/customers/{c2}/detach",
                {"phoneNumber": phone},
                0,
            ),
        )
        detach.start()
        wait_for(lambda: blocked_by(observer, merging), "the detach never waited")
        holder.exec_driver_sql("ROLLBACK")
        merge.join(timeout=60)
        detach.join(timeout=60)
    engine.dispose()

    merged, detached = answers["merge"], answers["detach"]
    assert merged.status == 200 and detached.status == 200, answers
    assert merged.answer["contact"]["primaryContactId"] == b
    assert merged.answer["contact"]["secondaryContactIds"] == [c, c2]
    assert [
        (customer["primaryContactId"], customer["secondaryContactIds"])
        for customer in detached.answer["contacts"]
    ] == [(b, []), (c, []), (c2, [])]
    events = ledger(url)
    (detached_event, *splits) = [
        events[n] for n in events_of(events, detached.request_id)
    ]
    assert (detached_event.type, detached_event.customer_id) == ("customer.detached", b)
    assert [event.type for event in splits] == ["customer.split"] * 3
    assert retries(base_urls) == before
    assert_invariants(table(url))
    assert_ledger_explains_the_table(url)
    checked = assert_answers_describe_customers_at_commit(client.sent, events)
    print(
        f"\ndetach behind a merge ({engine_name(url)}): 5 requests over 2"
        f" instances, the detach followed"
        f" customer {c} into {b} and split it in 3, {len(events)} events,"
        f" {checked} answers checked against the ledger, 0 retries"
    )


@only_on("postgresql", "running")
@pytest.mark.parametrize("waiter", ["erase", "identify"])
def test_a_request_that_finds_its_customer_merged_lets_go_of_the_old_primary(
    service: tuple[str, list[str]], waiter: str
) -> None:
    """PostgreSQL: a request waits for the row lock of customer X's primary
    (an erasure of X, or an identify with X's email) while X is merged into
    the older customer C. A detach of X's phone from C (run here through
    writes.correct_customer, and held after it locked C until the request
    waits for C too) splits X off again, changing X's row. The request lets
    go of X's row when it finds X inside C, before it waits for C: nothing
    deadlocks, nothing starts again, and the request then serves X as the
    detach left it (before, it kept the lock, the detach waited for it, and
    PostgreSQL broke the deadlock after a second: one of them started
    again)."""
    url, base_urls = service
    client = Client(base_urls)
    phone = "5550700"
    with requests.Session() as http:
        c = client.identify(http, "c@shop.com", "5550701").answer["contact"]
        x = client.identify(http, "x@shop.com", phone).answer["contact"]
    c_id, x_id = c["primaryContactId"], x["primaryContactId"]
    before = retries(base_urls)
    answers: dict[str, Sent] = {}
    detached: dict[str, Any] = {}
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    # The detach is held idle in its transaction until the request waits: on
    # a busy machine that took longer than the service's idle limit, and the
    # server ended the detach. The test's own connection may wait longer.
    options = engine_options(url, pool_size=1)
    options["connect_args"]["options"] = options["connect_args"]["options"].replace(
        f"idle_in_transaction_session_timeout={IDLE_MS}",
        "idle_in_transaction_session_timeout=60000",
    )
    service_engine = create_engine(url, **options)

    def send(name: str, method: str, path: str, body: Any, n: int) -> None:
        with requests.Session() as http:
            answers[name] = client.send(http, method, path, body, base_urls[n])

    def detach_once_the_request_waits(found: CustomerRows) -> correct.Correction:
        with engine.connect() as observer:
            wait_for(lambda: blocked_by(observer, detaching), "it never waited")
        return correct.detach(
            found.rows,
            found.retired,
            field=PHONE_NUMBER,
            value=phone,
            evidence=found.evidence,
        )

    def detach() -> None:
        detached["done"] = writes.correct_customer(
            detach_connection,
            c_id,
            detach_once_the_request_waits,
            request_id="detach-held-after-its-lock",
            evidence=True,
        )

    request = (
        ("DELETE", f"/customers/{x_id}", None)
        if waiter == "erase"
        else ("POST", "/identify", {"email": "x@shop.com", "phoneNumber": "5550702"})
    )
    with (
        engine.connect() as holder,
        engine.connect() as observer,
        service_engine.connect() as detach_connection,
    ):
        detaching = detach_connection.exec_driver_sql(
            "SELECT pg_backend_pid()"
        ).scalar_one()
        holder.exec_driver_sql("BEGIN")
        holder.execute(select(Contact.id).where(Contact.id == x_id).with_for_update())
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        body = {"email": "c@shop.com", "phoneNumber": phone}
        threads = [
            threading.Thread(target=send, args=("merge", "POST", "/identify", body, 1))
        ]
        threads[0].start()
        (merging,) = wait_for(
            lambda: blocked_by(observer, holder_pid), "no merge waited"
        )
        threads.append(threading.Thread(target=detach))
        threads[1].start()
        wait_for(lambda: blocked_by(observer, merging), "the detach never waited")
        threads.append(threading.Thread(target=send, args=(waiter, *request, 0)))
        threads[2].start()
        wait_for(lambda: blocked_by(observer, merging)[1:], "the request never waited")
        holder.exec_driver_sql("ROLLBACK")
        for thread in threads:
            thread.join(timeout=60)
    service_engine.dispose()
    engine.dispose()

    correction, detach_retries = detached["done"]
    merged, served = answers["merge"], answers[waiter]
    assert merged.answer["contact"]["primaryContactId"] == c_id
    assert merged.answer["contact"]["secondaryContactIds"] == [x_id]
    assert [
        (customer.primary_id, customer.secondary_ids)
        for customer in correction.customers
    ] == [(c_id, []), (x_id, [])]
    assert served.status == 200, served
    if waiter == "erase":
        assert served.answer["erasedContactIds"] == [x_id]
    else:
        assert served.answer["contact"]["primaryContactId"] == x_id
        assert len(served.answer["contact"]["secondaryContactIds"]) == 1
    assert (detach_retries, retries(base_urls)) == (0, before)
    assert_invariants(table(url), detached=True)
    assert_ledger_explains_the_table(url)
    events = ledger(url)
    checked = assert_answers_describe_customers_at_commit(client.sent, events)
    print(
        f"\n{waiter} behind a merge and a detach ({engine_name(url)}): 4 requests"
        f" over 2 instances and a detach in the test, no deadlock, {len(events)}"
        f" events, {checked} answers checked against the ledger, 0 retries"
    )


@only_on("sqlite", "running")
def test_blocking_and_unblocking_a_value_wait_for_the_sqlite_write_lock(
    service: tuple[str, list[str]],
) -> None:
    """SQLite: another connection holds the write lock (as a detach or an
    identify does while it writes) when a value is blocked and another one
    unblocked. Both wait for the lock and are served once it is released
    (before, they failed at once with a 503: the service sets no busy
    timeout, and these writes did not wait for the lock like the others)."""
    url, base_urls = service
    client = Client(base_urls)
    with requests.Session() as http:
        body = {"phoneNumber": "5550500"}
        unblocked = client.send(http, "POST", "/blocked-values", body).answer["id"]

    def send(method: str, path: str, body: dict[str, Any] | None) -> None:
        with requests.Session() as http:
            client.send(http, method, path, body)

    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    threads = [
        threading.Thread(
            target=send, args=("POST", "/blocked-values", {"email": "w@shop.com"})
        ),
        threading.Thread(
            target=send, args=("DELETE", f"/blocked-values/{unblocked}", None)
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    holder.execute("COMMIT")
    holder.close()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(sent.status for sent in client.sent[1:]) == [201, 204]
    with requests.Session() as http:
        listed = client.send(http, "GET", "/blocked-values").answer["blockedValues"]
    assert [blocked.get("value") for blocked in listed if not blocked["builtin"]] == [
        "w@shop.com"
    ]


def test_the_id_of_a_deleted_row_is_never_given_to_a_new_contact(
    service: tuple[str, list[str]],
) -> None:
    """The newest row is erased, then the newest is deleted by a detach (it
    held only the detached phone): each next contact gets a new id, and the
    deleted ids stay unknown (before, SQLite gave the next contact the
    deleted id, and with it the erased customer's history)."""
    _, base_urls = service
    client = Client(base_urls)
    with requests.Session() as http:
        client.identify(http, "a@shop.com", "5550600")
        erased = client.identify(http, "b@shop.com", "5550601").answer["contact"]
        assert (
            client.erase(http, erased["primaryContactId"], suppress=False).status == 200
        )
        after_erase = client.identify(http, "c@shop.com", None).answer["contact"]
        alone = client.identify(http, None, "5550602").answer["contact"]
        client.identify(http, "c@shop.com", "5550602")
        body = {"phoneNumber": "5550602"}
        assert client.detach(http, alone["primaryContactId"], body).status == 200
        after_detach = client.identify(http, "d@shop.com", None).answer["contact"]
        for deleted in (erased, alone):
            path = f"/customers/{deleted['primaryContactId']}/history"
            assert client.send(http, "GET", path).status == 404

    assert after_erase["primaryContactId"] == 3
    assert alone["primaryContactId"] == 4
    assert after_detach["primaryContactId"] == 5
