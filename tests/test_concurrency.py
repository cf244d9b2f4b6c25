"""Real parallel requests against real gunicorn worker processes; the table's
invariants are checked afterwards.

SQLite: one instance with 4 workers on one file. PostgreSQL: two instances
(separate ports, 4 workers each) on one database, requests spread over both."""

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from conftest import gunicorn, migrate
from invariants import assert_invariants, clusters, live_rows
from live import free_port

THREADS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, list[str]]]:
    """A migrated, empty database and the base URLs of the instances serving it."""
    if request.param == "sqlite":
        url, instances = f"sqlite:///{tmp_path / 'contacts.db'}", 1
    else:
        url, instances = request.getfixturevalue("postgres_url"), 2
    migrate(url)
    with ExitStack() as stack:
        base_urls = [
            stack.enter_context(gunicorn(url, free_port())) for _ in range(instances)
        ]
        yield url, base_urls


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


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def retries(base_urls: list[str]) -> int:
    """Transactions retried after a lost race, summed over every instance."""
    total = 0.0
    for base_url in base_urls:
        text = requests.get(f"{base_url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "identify_race_retries":
                total += sum(
                    s.value for s in family.samples if s.name.endswith("_total")
                )
    return int(total)


def table(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = live_rows(connection)
    engine.dispose()
    return rows


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

    run_threads([lambda seed=seed: client(seed) for seed in range(THREADS)])

    assert statuses == [200] * (THREADS * per_thread)
    rows = table(url)
    assert_invariants(rows)
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
        f" {retries(base_urls)} retries, invariants hold"
    )
