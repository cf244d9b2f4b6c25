"""Delivering webhooks with real worker processes (`flask --app app webhooks
run`) to a real receiver on 127.0.0.1 (receiver.py) that verifies every
signature with the standardwebhooks package: at least once, through a
receiver that is down, a worker killed mid-delivery, retries, 410,
Retry-After, rotation, replay, erasure; two workers on PostgreSQL."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from conftest import ROOT
from engines import only_on
from live import free_port
from models import WebhookDelivery, db
from receiver import KEY, Received, identify, merged, receiver

pytest_plugins = ["test_webhooks"]

# Retries a few milliseconds apart: the whole schedule takes about 2 s.
FAST = {"WEBHOOK_RETRY_BASE_SECONDS": "0.0002", "WEBHOOK_POLL_SECONDS": "0.05"}


@contextmanager
def worker(
    database_url: str, env: dict[str, str] | None = None, *, traces: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """A delivery worker process, yielded once it says it started; stopped
    with SIGTERM at the end (if still running), which it must answer by
    exiting 0. Its log must hold no email, no secret, and no trace unless
    `traces`."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "webhooks", "run"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "WEBHOOK_SECRET_KEY": KEY,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            **FAST,
            **(env or {}),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def output() -> str:
        log.seek(0)
        return log.read().decode()

    try:
        wait_until(lambda: "webhook worker started" in output() or process.poll())
        assert process.poll() is None, output()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        written = output()
        log.close()
        assert traces or "Traceback" not in written, written
        assert "@hillvalley" not in written, written
        assert "@fluxkart" not in written, written
        assert "whsec_" not in written, written


def register(client: FlaskClient, url: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/webhooks", json={"url": url, **extra})
    assert response.status_code == 201, response.get_json()
    created: dict[str, Any] = response.get_json()
    return created


def of_type(kind: str) -> Callable[[list[Received]], bool]:
    return lambda seen: any(r.payload and r.payload["type"] == kind for r in seen)


def of_id(event_id: int) -> Callable[[list[Received]], bool]:
    return lambda seen: any(
        r.payload and r.payload["data"]["id"] == event_id for r in seen
    )


def attempts(client: FlaskClient, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    page = client.get(f"/webhooks/{endpoint['id']}/deliveries?limit=100")
    found: list[dict[str, Any]] = page.get_json()["deliveries"]
    return found


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def disabled(client: FlaskClient) -> bool:
    return bool(client.get("/webhooks").get_json()["webhooks"][0]["disabledAt"])


def pending(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0


def test_a_merge_is_delivered_signed_as_the_feed_shows_it(
    database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, f"{hook.url}/hooks")
        hook.secrets = [endpoint["secret"]]
        with worker(database_url):
            merged(local)
            seen = hook.wait_for(lambda seen: len(seen) == 3)

    feed = local.get("/events").get_json()["events"]
    assert [r.verified_by for r in seen] == [[0], [0], [0]]
    assert [r.payload["data"] for r in seen] == feed
    merge = seen[2]
    assert merge.path == "/hooks"
    assert merge.payload["type"] == "customer.merged"
    assert merge.payload["timestamp"] == feed[2]["at"]
    assert merge.headers["webhook-id"] == f"msg_{endpoint['id']}_3"
    assert merge.headers["content-type"] == "application/json"
    assert [a["outcome"] for a in attempts(local, endpoint)] == ["delivered"] * 3


def test_a_receiver_down_then_failing_gets_the_event_later_under_one_id(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    port = free_port()
    endpoint = register(local, f"http://127.0.0.1:{port}/")
    answers = iter([500])
    with worker(database_url, {"WEBHOOK_RETRY_BASE_SECONDS": "0.02"}):
        identify(local, "doc@fluxkart.com", None)
        wait_until(lambda: len(attempts(local, endpoint)) >= 2)
        answer = lambda _: (next(answers, 200), {})  # noqa: E731
        with receiver(port, [endpoint["secret"]], answer) as hook:
            seen = hook.wait_for(lambda seen: len(seen) == 2)
            wait_until(lambda: pending(app) == 0)

    assert {r.headers["webhook-id"] for r in seen} == {f"msg_{endpoint['id']}_1"}
    assert all(r.verified_by == [0] for r in seen)
    outcomes = [a["outcome"] for a in reversed(attempts(local, endpoint))]
    assert outcomes[-1] == "delivered"
    assert outcomes[:-1] == ["failed"] * (len(outcomes) - 1)
    assert attempts(local, endpoint)[1]["statusCode"] == 500


def test_a_worker_killed_mid_delivery_delivers_again_with_the_same_id(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.secrets = [endpoint["secret"]]
        hook.hold.clear()
        with worker(database_url) as first:
            identify(local, "doc@fluxkart.com", None)
            assert hook.arrived.wait(30)
            first.kill()
            first.wait()
        hook.hold.set()
        hook.wait_for(lambda seen: len(seen) == 1)
        with worker(database_url):
            seen = hook.wait_for(lambda seen: len(seen) == 2)
            wait_until(lambda: pending(app) == 0)

    assert [r.headers["webhook-id"] for r in seen] == [f"msg_{endpoint['id']}_1"] * 2
    assert all(r.verified_by == [0] for r in seen)
    assert [a["outcome"] for a in attempts(local, endpoint)] == ["delivered"]


def test_sigterm_lets_the_attempt_in_flight_finish_and_be_recorded(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.hold.clear()
        with worker(database_url) as running:
            identify(local, "doc@fluxkart.com", None)
            assert hook.arrived.wait(30)
            running.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            hook.hold.set()
            assert running.wait(timeout=30) == 0

    assert len(hook.received) == 1
    assert [a["outcome"] for a in attempts(local, endpoint)] == ["delivered"]
    assert pending(app) == 0


def test_a_receiver_that_does_not_answer_never_delays_another_endpoint(
    database_url: str, local: FlaskClient
) -> None:
    with receiver() as slow, receiver() as fast:
        held = register(local, slow.url)
        prompt = register(local, fast.url)
        fast.secrets = [prompt["secret"]]
        slow.hold.clear()
        with worker(database_url):
            merged(local)
            assert slow.arrived.wait(30)
            seen = fast.wait_for(lambda seen: len(seen) == 3)
            waiting = slow.received == []
            slow.hold.set()
            slow.wait_for(lambda seen: len(seen) == 3)

    assert waiting
    assert [r.payload["data"]["id"] for r in seen] == [1, 2, 3]
    assert [a["outcome"] for a in attempts(local, held)] == ["delivered"] * 3


@only_on("postgresql")
def test_two_workers_on_postgresql_deliver_each_event_once_never_concurrently(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        first = register(local, f"{hook.url}/first")
        second = register(local, f"{hook.url}/second")
        hook.secrets = [first["secret"], second["secret"]]
        with worker(database_url), worker(database_url):
            for n in range(60):
                identify(local, f"buyer{n}@fluxkart.com", None)
            seen = hook.wait_for(lambda seen: len(seen) >= 120)
            wait_until(lambda: pending(app) == 0)
            time.sleep(0.5)

    ids = [r.headers["webhook-id"] for r in hook.received]
    assert len(ids) == len(set(ids)) == 120
    assert hook.most_in_flight == {"/first": 1, "/second": 1}
    assert all(r.verified_by for r in seen)


@only_on("sqlite")
def test_a_second_worker_on_one_sqlite_file_is_refused(
    database_url: str, local: FlaskClient
) -> None:
    with worker(database_url):
        time.sleep(1)
        second = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "webhooks", "run"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url, "WEBHOOK_SECRET_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert second.returncode == 1
    assert "Another webhook worker serves this SQLite database" in second.stderr


def test_after_a_rotation_both_secrets_verify_the_deliveries(
    database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        rotated = local.post(f"/webhooks/{endpoint['id']}/rotate-secret").get_json()
        hook.secrets = [endpoint["secret"], rotated["secret"]]
        with worker(database_url):
            identify(local, "doc@fluxkart.com", None)
            seen = hook.wait_for(lambda seen: len(seen) == 1)

    assert seen[0].verified_by == [0, 1]
    assert len(seen[0].headers["webhook-signature"].split(" ")) == 2


def test_410_gone_disables_the_endpoint_and_nothing_more_is_sent(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.answer = lambda _: (410, {})
        with worker(database_url):
            identify(local, "doc@fluxkart.com", None)
            hook.wait_for(lambda seen: len(seen) == 1)
            wait_until(lambda: disabled(local))
            identify(local, "marty@fluxkart.com", None)
            time.sleep(1)

    listed = local.get("/webhooks").get_json()["webhooks"][0]
    assert len(hook.received) == 1
    assert listed["disabledReason"] == "The receiver answered 410 Gone."
    assert [a["outcome"] for a in attempts(local, endpoint)] == ["gone"]
    assert 'webhook_endpoints{state="disabled"} 1.0' in local.get("/metrics").get_data(
        as_text=True
    )


def test_event_types_choose_what_an_endpoint_receives(
    database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url, eventTypes=["customer.merged"])
        everything = register(local, f"{hook.url}/all")
        hook.secrets = [endpoint["secret"], everything["secret"]]
        with worker(database_url):
            merged(local)
            seen = hook.wait_for(lambda seen: len(seen) == 4)

    chosen = [r.payload["type"] for r in seen if r.path == "/"]
    assert chosen == ["customer.merged"]
    assert all(r.verified_by == [0 if r.path == "/" else 1] for r in seen)
    assert endpoint["eventTypes"] == ["customer.merged"]
    assert everything["eventTypes"] is None


def test_a_replay_delivers_the_events_after_the_given_id_again(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.secrets = [endpoint["secret"]]
        with worker(database_url):
            merged(local)
            hook.wait_for(lambda seen: len(seen) == 3)
            replayed = local.post(
                f"/webhooks/{endpoint['id']}/replay", json={"after": 1}
            )
            seen = hook.wait_for(lambda seen: len(seen) == 5)

    assert replayed.status_code == 202
    ids = [r.headers["webhook-id"] for r in seen]
    assert ids[3:] == [f"msg_{endpoint['id']}_2", f"msg_{endpoint['id']}_3"]
    assert all(r.verified_by == [0] for r in seen)


def test_erased_values_never_reach_the_receiver_after_the_erasure(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    port = free_port()
    endpoint = register(local, f"http://127.0.0.1:{port}/")
    with worker(database_url, {"WEBHOOK_RETRY_BASE_SECONDS": "0.05"}):
        merged(local)
        wait_until(lambda: len(attempts(local, endpoint)) >= 1)
        erased = local.delete("/customers/1")
        assert erased.status_code == 200
        with receiver(port, [endpoint["secret"]]) as hook:
            seen = hook.wait_for(of_type("customer.erased"))
            wait_until(lambda: pending(app) == 0)

    bodies = b"".join(r.body for r in hook.received)
    for value in (b"george@hillvalley.edu", b"biffsucks@hillvalley.edu", b"919191"):
        assert value not in bodies
    assert b"717171" not in bodies
    assert all(r.verified_by == [0] for r in seen)


def test_retry_after_is_honoured(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    answers = iter([(503, {"Retry-After": "2"})])
    with receiver() as hook:
        register(local, hook.url)
        hook.answer = lambda _: next(answers, (200, {}))
        with worker(database_url):
            identify(local, "doc@fluxkart.com", None)
            seen = hook.wait_for(lambda seen: len(seen) == 2)

    assert seen[1].at - seen[0].at >= 1.9


def test_an_event_is_given_up_after_the_last_retry(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.answer = lambda _: (500, {})
        with worker(database_url):
            identify(local, "doc@fluxkart.com", None)
            wait_until(lambda: len(attempts(local, endpoint)) == 15)

    outcomes = [a["outcome"] for a in reversed(attempts(local, endpoint))]
    assert outcomes == ["failed"] * 14 + ["gave_up"]
    assert pending(app) == 0
    assert len(hook.received) == 15
    assert len({r.headers["webhook-id"] for r in hook.received}) == 1
    metrics = local.get("/metrics").get_data(as_text=True)
    assert 'webhook_deliveries_total{outcome="gave_up"} 1.0' in metrics
    assert 'webhook_deliveries_total{outcome="failed"} 14.0' in metrics


def test_a_private_receiver_is_refused_again_at_delivery_time(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    with receiver() as hook:
        endpoint = register(local, hook.url)
        with worker(database_url, {"WEBHOOK_ALLOW_PRIVATE": "false"}):
            identify(local, "doc@fluxkart.com", None)
            wait_until(lambda: len(attempts(local, endpoint)) >= 1)

    refused = attempts(local, endpoint)[-1]
    assert hook.received == []
    assert refused["outcome"] == "failed"
    assert "private" in refused["error"]


def test_the_worker_does_not_start_without_the_secret_key(database_url: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "webhooks", "run"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET_KEY"},
            "DATABASE_URL": database_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode == 1
    assert "WEBHOOK_SECRET_KEY is not set" in refused.stderr


@only_on("postgresql")
def test_deliveries_go_on_after_the_database_drops_the_workers_connections(
    app: Flask, database_url: str, local: FlaskClient
) -> None:
    """PostgreSQL restarting, as the worker sees it: every one of its
    connections ended by the server (pg_terminate_backend)."""
    name = f"webhooks_{os.getpid()}"
    with receiver() as hook:
        endpoint = register(local, hook.url)
        hook.secrets = [endpoint["secret"]]
        with worker(f"{database_url}&application_name={name}", traces=True):
            identify(local, "doc@fluxkart.com", None)
            hook.wait_for(lambda seen: len(seen) == 1)
            with app.app_context(), db.engine.connect() as connection:
                ended = connection.exec_driver_sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    f" WHERE application_name = '{name}'"
                ).scalar()
            identify(local, "marty@fluxkart.com", None)
            seen = hook.wait_for(of_id(2))

    assert ended >= 1
    # Event 1 may come twice: its result may have been lost with the connection.
    assert {r.payload["data"]["id"] for r in seen} == {1, 2}
    assert {(r.payload["data"]["id"], r.headers["webhook-id"]) for r in seen} == {
        (1, f"msg_{endpoint['id']}_1"),
        (2, f"msg_{endpoint['id']}_2"),
    }
    assert all(r.verified_by == [0] for r in seen)
