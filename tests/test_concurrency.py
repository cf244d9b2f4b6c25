"""Real parallel requests against real gunicorn worker processes; the table's
invariants are checked afterwards.

SQLite: one instance with 4 workers on one file. PostgreSQL: two instances
(separate ports, 4 workers each) on one database, requests spread over both."""

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine

from conftest import empty_tables
from invariants import (
    assert_invariants,
    assert_ledger_explains_the_table,
    clusters,
    ledger,
    table,
)
from live import FeedReader, instances, retries, run_threads

THREADS = 16


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """The instances of one engine, started once for every test here that
    takes `service`."""
    with instances(request, tmp_path_factory.mktemp("concurrency"), {}) as served:
        yield served


@pytest.fixture
def service(running: tuple[str, list[str]]) -> tuple[str, list[str]]:
    """A migrated database and the base URLs of the instances serving it, on
    empty tables (ids from 1 again)."""
    url, _ = running
    engine = create_engine(url)
    with engine.begin() as connection:
        empty_tables(connection)
    engine.dispose()
    return running


def race(base_urls: list[str], bodies: list[dict[str, Any]]) -> list[requests.Response]:
    """Send every body at once, one thread each, spread over the instances."""
    barrier = threading.Barrier(len(bodies))
    responses: list[requests.Response | None] = [None] * len(bodies)

    def send(index: int) -> None:
        base_url = base_urls[index % len(base_urls)]
        barrier.wait()
        responses[index] = requests.post(
            f"{base_url}/identify", json=bodies[index], timeout=60
        )

    run_threads([lambda i=i: send(i) for i in range(len(bodies))])
    return [response for response in responses if response is not None]


def test_racing_identical_new_requests_create_one_primary(
    service: tuple[str, list[str]],
) -> None:
    url, base_urls = service
    rounds = [
        [{"email": "new@fluxkart.com", "phoneNumber": "5550001"}] * THREADS,
        [
            {"email": "same-email@fluxkart.com", "phoneNumber": f"77700{i:02d}"}
            for i in range(THREADS)
        ],
        [
            {"email": f"shared-phone-{i}@fluxkart.com", "phoneNumber": "8880000"}
            for i in range(THREADS)
        ],
    ]

    for bodies in rounds:
        responses = race(base_urls, bodies)
        assert [r.status_code for r in responses] == [200] * len(bodies)

    rows = table(url)
    assert_invariants(rows)
    assert_ledger_explains_the_table(url)
    assert len(rows) == 1 + THREADS + THREADS
    assert len(clusters(rows)) == 3
    print(
        f"\nidentical-race: {3 * THREADS} requests, {len(rows)} rows, 3 clusters,"
        f" {retries(base_urls)} retries"
    )


def test_racing_chained_merges_leave_one_primary_and_no_chain(
    service: tuple[str, list[str]],
) -> None:
    url, base_urls = service
    created = race(
        base_urls,
        [
            {"email": f"m{i}@fluxkart.com", "phoneNumber": f"60000{i:02d}"}
            for i in range(THREADS)
        ],
    )
    merges = race(
        base_urls,
        [
            {"email": f"m{i}@fluxkart.com", "phoneNumber": f"60000{i + 1:02d}"}
            for i in range(THREADS - 1)
        ],
    )

    assert {r.status_code for r in created + merges} == {200}
    rows = table(url)
    assert_invariants(rows)
    assert_ledger_explains_the_table(url)
    assert len(rows) == THREADS
    assert len(clusters(rows)) == 1
    print(
        f"\nchained-merge race: {len(created) + len(merges)} requests,"
        f" {retries(base_urls)} retries, invariants hold"
    )


def test_racing_merges_over_a_small_pool_keep_every_invariant(
    service: tuple[str, list[str]],
) -> None:
    url, base_urls = service
    emails = [f"customer{i}@fluxkart.com" for i in range(20)]
    phones = [f"55512{i:02d}" for i in range(20)]
    per_thread = 25
    statuses: list[int] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as http:
            for n in range(per_thread):
                email = rng.choice(emails + [None])
                phone = rng.choice(phones + [None]) if email else rng.choice(phones)
                base_url = base_urls[(seed + n) % len(base_urls)]
                response = http.post(
                    f"{base_url}/identify",
                    json={"email": email, "phoneNumber": phone},
                    timeout=60,
                )
                with lock:
                    statuses.append(response.status_code)

    with FeedReader(base_urls[-1]) as reader:
        run_threads([lambda seed=seed: client(seed) for seed in range(THREADS)])

    assert statuses == [200] * (THREADS * per_thread)
    rows = table(url)
    assert_invariants(rows)
    assert_ledger_explains_the_table(url)
    events = ledger(url)
    assert reader.seen == [event.id for event in events], "the feed missed events"
    for cluster in clusters(rows):
        primary = min(cluster, key=lambda row: (row.created_at, row.id))
        answer = requests.post(
            f"{base_urls[0]}/identify",
            json={"email": primary.email, "phoneNumber": primary.phone_number},
            timeout=10,
        ).json()["contact"]
        assert answer["primaryContactId"] == primary.id
        assert sorted(answer["secondaryContactIds"]) == sorted(
            row.id for row in cluster if row != primary
        )
    assert table(url) == rows
    print(
        f"\nmerge-race: {len(statuses)} requests from {THREADS} threads,"
        f" {len(rows)} rows, {len(clusters(rows))} clusters,"
        f" {retries(base_urls)} retries, invariants hold; {len(events)} events,"
        f" each seen once by a reader paging the feed meanwhile, and the ledger"
        f" replays to the table"
    )


def test_a_reader_paging_the_feed_during_racing_writes_misses_no_event(
    service: tuple[str, list[str]],
) -> None:
    """Every request writes (new customers, and secondaries of a few shared
    phones), spread over the instances, while a reader pages GET /events. A
    later commit never shows an id below one the reader already passed."""
    url, base_urls = service
    per_thread = 25

    def client(seed: int) -> None:
        with requests.Session() as http:
            for n in range(per_thread):
                response = http.post(
                    f"{base_urls[(seed + n) % len(base_urls)]}/identify",
                    json={
                        "email": f"feed-{seed}-{n}@fluxkart.com",
                        "phoneNumber": f"9{seed:02d}{n % 3:04d}",
                    },
                    timeout=60,
                )
                assert response.status_code == 200

    with FeedReader(base_urls[0]) as reader:
        run_threads([lambda seed=seed: client(seed) for seed in range(THREADS)])

    events = ledger(url)
    assert len(events) == THREADS * per_thread
    assert reader.seen == [event.id for event in events]
    assert_ledger_explains_the_table(url)
    print(f"\nfeed race: {len(events)} events, each seen once, in order")


@pytest.fixture(params=["sqlite", "postgresql"])
def limited_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, list[str]]]:
    """Like `service`, with MAX_PARTNERS_PER_VALUE=3."""
    with instances(request, tmp_path, {"MAX_PARTNERS_PER_VALUE": "3"}) as served:
        yield served


def test_racing_requests_never_give_a_value_more_partners_than_its_limit(
    limited_service: tuple[str, list[str]],
) -> None:
    """A phone has 2 of its 3 allowed partners; 16 requests with new emails
    race to add the third. Exactly one links; the others are served without
    the phone. Then the same for an email with 2 phones and 16 new phones."""
    url, base_urls = limited_service
    for email, phone in [
        ("p0@fluxkart.com", "5557000"),
        ("p1@fluxkart.com", "5557000"),
        ("q@fluxkart.com", "5558000"),
        ("q@fluxkart.com", "5558001"),
    ]:
        race(base_urls, [{"email": email, "phoneNumber": phone}])

    by_phone = race(
        base_urls,
        [
            {"email": f"p{i}@fluxkart.com", "phoneNumber": "5557000"}
            for i in range(2, 18)
        ],
    )
    by_email = race(
        base_urls,
        [
            {"email": "q@fluxkart.com", "phoneNumber": f"55581{i:02d}"}
            for i in range(16)
        ],
    )

    for responses in (by_phone, by_email):
        assert {r.status_code for r in responses} == {200}
        refused = [r for r in responses if "ignored" in r.json()]
        assert len(refused) == len(responses) - 1
        assert all(
            r.json()["ignored"]
            == [
                {
                    "field": "phoneNumber",
                    "reason": "limit",
                    "limit": "MAX_PARTNERS_PER_VALUE",
                }
            ]
            for r in refused
        )
    rows = table(url)
    assert_invariants(rows)
    assert_ledger_explains_the_table(url)
    assert len({r.email for r in rows if r.phone_number == "5557000"}) == 3
    assert len({r.phone_number for r in rows if r.email == "q@fluxkart.com"}) == 3
    refusals = [e for e in ledger(url) if e.type == "customer.link_refused"]
    assert len(refusals) == 30
    print(f"\npartner race: 32 racing requests, 2 linked, {len(refusals)} refused")
