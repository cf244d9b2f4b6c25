"""Webhook endpoints through the API (registering, listing, deleting,
rotating, attempts, replay, their refusals), the secrets at rest, the
`types=` filter of the event lists, and the delivery metrics. Delivering
itself is test_webhook_delivery.py's."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select, text

import delivery
from answers import assert_problem
from app import create_app
from conftest import empty_database, gunicorn
from live import free_port
from models import WebhookAttempt, WebhookEndpoint, db
from receiver import KEY, identify, merged, receiver
from webhooks import SecretBox


@pytest.fixture
def hooks(database_url: str) -> Iterator[Flask]:
    """The app with a WEBHOOK_SECRET_KEY; private receivers refused."""
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "API_KEYS": [],
            "WEBHOOK_SECRET_KEY": KEY,
            "WEBHOOK_ALLOW_PRIVATE": False,
        }
    )
    with app.app_context():
        empty_database()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def local(hooks: Flask) -> FlaskClient:
    """A client of the app with private receivers allowed."""
    hooks.config["WEBHOOK_ALLOW_PRIVATE"] = True
    return hooks.test_client()


def endpoints(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(WebhookEndpoint)) or 0


def test_events_and_history_with_types_list_only_those_types_and_keep_paging(
    client: FlaskClient,
) -> None:
    merged(client)
    identify(client, "marty@hillvalley.edu", None)

    created = client.get("/events?types=customer.created&limit=2").get_json()
    following = client.get(
        f"/events?types=customer.created&after={created['next']}"
    ).get_json()
    both = client.get("/events?types=customer.merged,customer.created").get_json()
    history = client.get("/customers/1/history?types=customer.merged").get_json()

    assert [e["id"] for e in created["events"]] == [1, 2]
    assert created["next"] == 2
    assert [e["id"] for e in following["events"]] == [4]
    assert following["next"] is None
    assert [e["type"] for e in both["events"]] == [
        "customer.created",
        "customer.created",
        "customer.merged",
        "customer.created",
    ]
    assert [e["type"] for e in history["events"]] == ["customer.merged"]


@pytest.mark.parametrize(
    "types", ["customer.nothing", "", "customer.created,", "CUSTOMER.CREATED"]
)
@pytest.mark.parametrize("path", ["/events", "/customers/1/history"])
def test_an_unknown_or_empty_type_is_a_400_naming_it(
    client: FlaskClient, path: str, types: str
) -> None:
    identify(client, "doc@fluxkart.com", None)

    response = client.get(path, query_string={"types": types})

    assert_problem(response, 400)
    unknown = types.split(",")[-1] if types.endswith(",") else types
    assert f'"{unknown}"' in response.get_json()["detail"]


def test_registering_answers_the_secret_once_and_stores_it_encrypted(
    hooks: Flask, local: FlaskClient
) -> None:
    response = local.post(
        "/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "eventTypes": ["customer.merged"]},
    )
    listed = local.get("/webhooks").get_json()

    assert response.status_code == 201
    created = response.get_json()
    assert created["secret"].startswith("whsec_")
    assert created["url"] == "http://127.0.0.1:9/hooks"
    assert created["eventTypes"] == ["customer.merged"]
    assert response.headers["Location"] == f"/webhooks/{created['id']}"
    assert listed == {"webhooks": [{k: v for k, v in created.items() if k != "secret"}]}
    with hooks.app_context(), db.engine.connect() as connection:
        stored = connection.execute(select(WebhookEndpoint.secret)).scalar()
        dump = str(connection.execute(text("SELECT * FROM webhook_endpoint")).all())
    assert created["secret"] not in dump
    assert created["secret"].removeprefix("whsec_") not in dump
    assert SecretBox(KEY).open(stored) == created["secret"]


def test_event_types_left_out_means_every_type(local: FlaskClient) -> None:
    response = local.post("/webhooks", json={"url": "https://127.0.0.1/"})

    assert response.status_code == 201
    assert response.get_json()["eventTypes"] is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "http://127.0.0.1/",
        {},
        {"url": None},
        {"url": 7},
        {"url": ""},
        {"url": "ftp://127.0.0.1/"},
        {"url": "127.0.0.1/hooks"},
        {"url": "http:///nohost"},
        {"url": "http://127.0.0.1:99999/"},
        {"url": "http://127.0.0.1:0/"},
        {"url": "http://user:pw@127.0.0.1/"},
        {"url": "http://127.0.0.1/#part"},
        {"url": "http://127.0.0.1/a b"},
        {"url": "http://bücher.example/"},
        {"url": "http://127.0.0.1/" + "a" * 2048},
        {"url": "http://127.0.0.1/", "eventTypes": []},
        {"url": "http://127.0.0.1/", "eventTypes": "customer.merged"},
        {"url": "http://127.0.0.1/", "eventTypes": ["customer.nothing"]},
        {"url": "http://127.0.0.1/", "eventTypes": [7]},
        {"url": "http://127.0.0.1/", "secret": "whsec_mine"},
    ],
)
def test_bad_registrations_are_400_and_store_nothing(
    hooks: Flask, local: FlaskClient, body: Any
) -> None:
    response = local.post("/webhooks", json=body)

    assert_problem(response, 415 if body is None else 400)
    assert endpoints(hooks) == 0


def test_a_query_parameter_on_registration_is_refused(
    hooks: Flask, local: FlaskClient
) -> None:
    response = local.post("/webhooks?dryRun=true", json={"url": "http://127.0.0.1/"})

    assert_problem(response, 400)
    assert endpoints(hooks) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "https://no-such-host.invalid/",
    ],
)
def test_private_or_unresolvable_receivers_are_422_without_allow_private(
    hooks: Flask, url: str
) -> None:
    response = hooks.test_client().post("/webhooks", json={"url": url})

    assert_problem(response, 422)
    assert endpoints(hooks) == 0


def test_registering_without_the_secret_key_is_503_and_stores_nothing(
    hooks: Flask, local: FlaskClient
) -> None:
    hooks.config["WEBHOOK_SECRET_KEY"] = None

    response = local.post("/webhooks", json={"url": "http://127.0.0.1/"})

    assert_problem(response, 503)
    assert "WEBHOOK_SECRET_KEY" in response.get_json()["detail"]
    assert endpoints(hooks) == 0


def test_deleting_an_endpoint_removes_it_and_an_unknown_one_is_404(
    hooks: Flask, local: FlaskClient
) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()

    deleted = local.delete(f"/webhooks/{created['id']}")
    again = local.delete(f"/webhooks/{created['id']}")
    huge = local.delete("/webhooks/99999999999")

    assert deleted.status_code == 204
    assert_problem(again, 404)
    assert_problem(huge, 404)
    assert endpoints(hooks) == 0


def test_rotating_answers_a_new_secret_and_keeps_the_old_for_a_day(
    hooks: Flask, local: FlaskClient
) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()

    rotated = local.post(f"/webhooks/{created['id']}/rotate-secret")
    unknown = local.post("/webhooks/999/rotate-secret")
    with_body = local.post(f"/webhooks/{created['id']}/rotate-secret", json={})

    assert rotated.status_code == 200
    answer = rotated.get_json()
    assert answer["secret"].startswith("whsec_")
    assert answer["secret"] != created["secret"]
    assert answer["previousSecretExpiresAt"] is not None
    assert_problem(unknown, 404)
    assert_problem(with_body, 400)
    with hooks.app_context(), db.engine.connect() as connection:
        row = connection.execute(
            select(WebhookEndpoint.secret, WebhookEndpoint.previous_secret)
        ).one()
    box = SecretBox(KEY)
    assert box.open(row.secret) == answer["secret"]
    assert box.open(row.previous_secret) == created["secret"]
    listed = local.get("/webhooks").get_json()["webhooks"][0]
    assert "secret" not in listed


@pytest.mark.parametrize(
    "body",
    [None, {}, {"after": -1}, {"after": "3"}, {"after": True}, {"after": 1, "x": 1}],
)
def test_bad_replays_are_400(local: FlaskClient, body: Any) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()

    response = local.post(f"/webhooks/{created['id']}/replay", json=body)

    assert_problem(response, 415 if body is None else 400)


def test_replay_and_deliveries_of_an_unknown_endpoint_are_404(
    local: FlaskClient,
) -> None:
    assert_problem(local.post("/webhooks/5/replay", json={"after": 0}), 404)
    assert_problem(local.get("/webhooks/5/deliveries"), 404)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "before=x", "page=2"])
def test_bad_deliveries_pages_are_400(local: FlaskClient, query: str) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()

    assert_problem(local.get(f"/webhooks/{created['id']}/deliveries?{query}"), 400)


def test_an_endpoint_receives_only_events_committed_after_it_was_registered(
    local: FlaskClient,
) -> None:
    merged(local)

    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()
    deliveries = local.get(f"/webhooks/{created['id']}/deliveries").get_json()
    metrics = local.get("/metrics").get_data(as_text=True)

    assert deliveries == {"deliveries": [], "pending": 0, "next": None}
    assert 'webhook_endpoints{state="enabled"} 1.0' in metrics
    assert f'webhook_lag_events{{endpoint="{created["id"]}"}} 0.0' in metrics


def test_metrics_count_events_not_yet_handed_over_as_lag(local: FlaskClient) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()
    merged(local)

    metrics = local.get("/metrics").get_data(as_text=True)

    assert f'webhook_lag_events{{endpoint="{created["id"]}"}} 3.0' in metrics
    assert f'webhook_lag_seconds{{endpoint="{created["id"]}"}}' in metrics


def test_webhook_routes_need_the_api_key(hooks: Flask) -> None:
    hooks.config["API_KEYS"] = ["right-key"]
    hooks.config["WEBHOOK_ALLOW_PRIVATE"] = True
    client = hooks.test_client()

    answers = [
        client.post("/webhooks", json={"url": "http://127.0.0.1/"}),
        client.get("/webhooks"),
        client.delete("/webhooks/1"),
        client.post("/webhooks/1/rotate-secret"),
        client.get("/webhooks/1/deliveries"),
        client.post("/webhooks/1/replay", json={"after": 0}),
    ]

    for answer in answers:
        assert_problem(answer, 401)
    assert endpoints(hooks) == 0


def test_parallel_rotations_on_real_workers_leave_one_secret_and_its_predecessor(
    database_url: str, hooks: Flask
) -> None:
    """Rotations sent at once to gunicorn's worker processes: each is
    answered 200 or 422 (another one won), and the stored secret is the one
    of a 200, signing beside a secret that was answered too."""
    env = {"WEBHOOK_SECRET_KEY": KEY, "WEBHOOK_ALLOW_PRIVATE": "true"}
    with gunicorn(database_url, free_port(), workers=2, env=env) as url:
        created = requests.post(
            f"{url}/webhooks", json={"url": "http://127.0.0.1/"}, timeout=10
        ).json()
        rotate = f"{url}/webhooks/{created['id']}/rotate-secret"
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: requests.post(rotate, timeout=30), range(24))
            )

    assert {answer.status_code for answer in answers} <= {200, 422}
    given = {a.json()["secret"] for a in answers if a.status_code == 200}
    assert given
    with hooks.app_context(), db.engine.connect() as connection:
        row = connection.execute(
            select(WebhookEndpoint.secret, WebhookEndpoint.previous_secret)
        ).one()
    box = SecretBox(KEY)
    assert box.open(row.secret) in given
    assert box.open(row.previous_secret) in given | {created["secret"]}
    assert box.open(row.previous_secret) != box.open(row.secret)


def test_the_worker_prunes_attempts_older_than_it_keeps(
    hooks: Flask, local: FlaskClient
) -> None:
    created = local.post("/webhooks", json={"url": "http://127.0.0.1/"}).get_json()
    now = datetime.now(UTC)
    with hooks.app_context(), db.engine.begin() as connection:
        connection.execute(
            insert(WebhookAttempt),
            [
                {
                    "endpoint_id": created["id"],
                    "event_id": n,
                    "attempt": 1,
                    "outcome": "delivered",
                    "at": now - delivery.ATTEMPTS_KEPT + timedelta(hours=hours),
                }
                for n, hours in enumerate([-48, -1, 1, 48])
            ],
        )
    with hooks.app_context():
        worker = delivery.Worker(
            db.engine,
            SecretBox(KEY),
            allow_private=True,
            retry_base=1,
            poll=1,
            concurrency=1,
        )
        pruned = worker.prune_attempts(now - delivery.ATTEMPTS_KEPT)
    left = local.get(f"/webhooks/{created['id']}/deliveries").get_json()

    assert pruned == 2
    assert [d["eventId"] for d in left["deliveries"]] == [3, 2]


def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped_at_a_day() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    assert delivery.retry_after("120", now) == timedelta(seconds=120)
    assert delivery.retry_after("Fri, 04 Dec 2026 12:05:00 GMT", now) == timedelta(
        minutes=5
    )
    assert delivery.retry_after("Fri, 04 Dec 2026 11:00:00 GMT", now) == timedelta(0)
    assert delivery.retry_after("9999999", now) == timedelta(hours=24)
    assert delivery.retry_after("soon", now) is None
    assert delivery.retry_after(None, now) is None


def test_the_retries_grow_and_span_more_than_a_day_with_the_default_base() -> None:
    delays = [
        delivery.retry_delay(attempt, 10).total_seconds()
        for attempt in range(1, delivery.ATTEMPTS)
    ]

    assert delivery.ATTEMPTS == 15
    assert all(later >= earlier * 0.79 for earlier, later in pairwise(delays))
    assert sum(delays) >= 24 * 3600
    assert delays[0] < 13


def test_an_attempt_that_gets_no_answer_ends_after_15_seconds() -> None:
    with receiver() as hook:
        hook.hold.clear()
        sender = delivery.Sender(hook.url, allow_private=True)
        started = time.monotonic()
        with pytest.raises(delivery.TimedOut):
            sender.post(b"{}", {"Content-Type": "application/json"})
        took = time.monotonic() - started
        sender.close()

    assert delivery.TIMEOUT <= took < delivery.TIMEOUT + 2
