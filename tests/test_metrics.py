"""GET /metrics: Prometheus counters and histograms, summed over gunicorn workers."""

from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

import writes
from answers import sample
from live import live_service
from reconcile import Identity, Outcome
from writes import Served


def metric(client: FlaskClient, name: str, **labels: str) -> float:
    return sample(client.get("/metrics").get_data(as_text=True), name, **labels)


def test_metrics_are_in_prometheus_text_format(client: FlaskClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {f.name for f in text_string_to_metric_families(response.get_data(True))}
    assert {"http_requests", "http_request_duration_seconds"} <= names


def test_requests_are_counted_and_timed_by_route_method_and_status(
    client: FlaskClient,
) -> None:
    labels = {"route": "/identify", "method": "POST", "status": "200"}
    count = metric(client, "http_requests_total", **labels)
    timed = metric(client, "http_request_duration_seconds_count", **labels)

    client.post("/identify", json={"phoneNumber": "123456"})

    assert metric(client, "http_requests_total", **labels) == count + 1
    assert metric(client, "http_request_duration_seconds_count", **labels) == timed + 1


def test_unknown_paths_share_one_route_label(client: FlaskClient) -> None:
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    before = metric(client, "http_requests_total", **labels)

    client.get("/wp-admin")
    client.get("/.env")

    assert metric(client, "http_requests_total", **labels) == before + 2


def test_identify_outcomes_and_merges_are_counted(client: FlaskClient) -> None:
    outcomes = ["created", "linked", "unchanged", "merged"]
    before = {o: metric(client, "identify_outcomes_total", outcome=o) for o in outcomes}
    merges = metric(client, "identify_merges_total")

    client.post("/identify", json={"email": "a@x.io", "phoneNumber": "1111"})
    client.post("/identify", json={"email": "b@x.io", "phoneNumber": "1111"})
    client.post("/identify", json={"email": "b@x.io"})
    client.post("/identify", json={"email": "c@x.io", "phoneNumber": "2222"})
    client.post("/identify", json={"email": "a@x.io", "phoneNumber": "2222"})

    after = {o: metric(client, "identify_outcomes_total", outcome=o) for o in outcomes}
    assert {o: after[o] - before[o] for o in outcomes} == {
        "created": 2,
        "linked": 1,
        "unchanged": 1,
        "merged": 1,
    }
    assert metric(client, "identify_merges_total") == merges + 1


def test_retries_after_lost_races_are_counted(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = Identity(1, ["a@x.io"], [], [], Outcome.CREATED)
    monkeypatch.setattr(writes, "identify", lambda *a, **k: Served(identity, [], 3))
    before = metric(client, "identify_race_retries_total")

    client.post("/identify", json={"email": "a@x.io"})

    assert metric(client, "identify_race_retries_total") == before + 3


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"json": {"email": "not an email"}}, "invalid_input"),
        ({"data": "{", "content_type": "application/json"}, "invalid_json"),
        ({"data": "x", "content_type": "text/plain"}, "unsupported_media_type"),
        (
            {"data": "x" * 70_000, "content_type": "application/json"},
            "request_entity_too_large",
        ),
    ],
)
def test_rejected_requests_are_counted_by_reason(
    client: FlaskClient, request_kwargs: dict[str, str], reason: str
) -> None:
    before = metric(client, "http_rejected_requests_total", reason=reason)

    client.post("/identify", **request_kwargs)

    assert metric(client, "http_rejected_requests_total", reason=reason) == before + 1


def test_metrics_are_summed_over_every_gunicorn_worker(tmp_path: Path) -> None:
    with live_service(tmp_path, workers=3) as url:
        for n in range(30):
            # A new connection each time, so the workers share the requests.
            requests.post(f"{url}/identify", json={"phoneNumber": f"{5000 + n}"})
        pages = [requests.get(f"{url}/metrics", timeout=10).text for _ in range(6)]

    writers = {path.name for path in (tmp_path / "metrics").glob("counter_*.db")}
    assert len(writers) > 1, "the requests should have reached several workers"
    for page in pages:
        assert sample(page, "identify_outcomes_total", outcome="created") == 30


def test_gunicorn_restart_starts_the_metrics_from_zero(tmp_path: Path) -> None:
    with live_service(tmp_path, workers=2) as url:
        requests.post(f"{url}/identify", json={"phoneNumber": "123456"})
    with live_service(tmp_path, workers=2) as url:
        page = requests.get(f"{url}/metrics", timeout=10).text

    assert sample(page, "identify_outcomes_total", outcome="created") == 0


def test_customer_reads_share_one_route_label_whatever_the_id(
    client: FlaskClient,
) -> None:
    client.post("/identify", json={"email": "doc@fluxkart.com"})
    route = "/customers/<int:contact_id>/history"
    found, missing = (
        metric(client, "http_requests_total", route=route, method="GET", status=s)
        for s in ("200", "404")
    )

    for contact_id in (1, 1, 1):
        client.get(f"/customers/{contact_id}/history")
    for contact_id in (2, 3, 4):
        client.get(f"/customers/{contact_id}/history")

    text = client.get("/metrics").get_data(as_text=True)
    assert (
        sample(text, "http_requests_total", route=route, method="GET", status="200")
        == found + 3
    )
    assert (
        sample(text, "http_requests_total", route=route, method="GET", status="404")
        == missing + 3
    )
    assert "/customers/2" not in text and "/customers/4" not in text
