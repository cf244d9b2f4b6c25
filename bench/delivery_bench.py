"""The webhooks series: the delivery worker (`flask --app app webhooks run`)
delivering to a local receiver that verifies every signature, on each
engine, beside a paced identify load.

For each engine, on a fresh database of CLUSTER_BASE_SIZE contacts, with one
endpoint registered through the API:
1. with the worker running, identify at HOOK_RATE requests/s for
   BENCH_DURATION seconds (each a brand-new customer: one event): identify's
   latency, and the lag from each event's `at` (taken in its transaction,
   just before the commit) to its arrival at the receiver;
2. the same load with no worker running: identify's latency without it, and
   a backlog of events;
3. the worker started again: how fast it delivers that backlog, from its
   first delivery to its last (one worker, one endpoint)."""

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import BENCH, HOST, ROOT, Database, Server, Settings, log
from series import CLUSTER_BASE_SIZE, SERIES_DATABASES
from standardwebhooks import Webhook

HOOK_RATE = int(os.environ.get("BENCH_HOOK_RATE", "300"))
# Threads sending the paced load, each its share of HOOK_RATE.
LOAD_THREADS = 8
SECRET_KEY = "bench-webhook-secret-key-of-at-least-32-characters"


@dataclass
class WebhookRun:
    database: str
    rate: int
    seconds: int
    with_worker_rps: float
    with_worker_p50_ms: float
    with_worker_p99_ms: float
    without_worker_rps: float
    without_worker_p50_ms: float
    without_worker_p99_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    backlog: int
    delivered_per_second: float
    unverified: int


class Receiver:
    """Counts verified deliveries by event id, with their arrival times."""

    def __init__(self, port: int) -> None:
        self.arrivals: dict[int, tuple[float, str]] = {}
        self.unverified = 0
        self.lock = threading.Lock()
        self.webhook: Webhook | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrived = time.time()
                headers = dict(self.headers.items())
                try:
                    assert receiver.webhook is not None
                    payload = receiver.webhook.verify(body, headers)
                except Exception:  # noqa: BLE001 - counted, reported
                    with receiver.lock:
                        receiver.unverified += 1
                else:
                    with receiver.lock:
                        receiver.arrivals.setdefault(
                            payload["data"]["id"], (arrived, payload["timestamp"])
                        )
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def paced_load(
    port: int, rate: int, seconds: int, tag: str
) -> tuple[float, list[float]]:
    """Identify at `rate` requests/s for `seconds`, each with a brand-new
    email and phone; (the rate achieved, latencies in ms)."""
    total = rate * seconds
    latencies: list[float] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def send(first: int) -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        mine = []
        for n in range(first, total, LOAD_THREADS):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps(
                {
                    "email": f"{tag}{n}@hooks.example.com",
                    "phoneNumber": str(7_000_000_000 + n),
                }
            )
            sent = time.perf_counter()
            connection.request(
                "POST", "/identify", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"identify answered {response.status}")
            mine.append((time.perf_counter() - sent) * 1000)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=send, args=(first,)) for first in range(LOAD_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return total / (time.perf_counter() - started), latencies


def start_worker(database: Database) -> subprocess.Popen[bytes]:
    """A delivery worker, once it says it started."""
    path = BENCH / ".data" / "webhooks-worker.log"
    path.write_bytes(b"")
    log_file = open(path, "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "webhooks", "run"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database.url,
            "WEBHOOK_SECRET_KEY": SECRET_KEY,
            "WEBHOOK_ALLOW_PRIVATE": "true",
        },
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"webhook worker started" not in path.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the webhook worker did not start: see {path}")
        time.sleep(0.05)
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    if worker.wait(timeout=60) != 0:
        raise SystemExit("the webhook worker did not stop cleanly")


def wait_for(receiver: Receiver, count: int, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while receiver.count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{receiver.count()} of {count} events delivered")
        time.sleep(0.01)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def register(port: int, url: str) -> str:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    connection.request(
        "POST",
        "/webhooks",
        json.dumps({"url": url}),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    if response.status != 201:
        raise SystemExit(f"registering the endpoint: {response.status} {answer}")
    return str(answer["secret"])


def webhook_series(settings: Settings) -> list[WebhookRun]:
    runs = []
    seconds = settings.duration
    for kind in sorted(SERIES_DATABASES.intersection(settings.databases)):
        database = Database(kind, settings)
        log(f"{kind}, webhooks at {HOOK_RATE} identify/s for {seconds} s")
        database.seed(CLUSTER_BASE_SIZE)
        receiver = Receiver(settings.port + 7)
        service = Server(
            "app:app",
            settings.port,
            {
                "DATABASE_URL": database.url,
                "WEBHOOK_SECRET_KEY": SECRET_KEY,
                "WEBHOOK_ALLOW_PRIVATE": "true",
            },
            workers=settings.workers,
        )
        service.start("/health")
        try:
            secret = register(settings.port, f"http://{HOST}:{settings.port + 7}/")
            receiver.webhook = Webhook(secret)
            worker = start_worker(database)
            with_rps, with_latency = paced_load(
                settings.port, HOOK_RATE, seconds, f"{kind}-with"
            )
            wait_for(receiver, HOOK_RATE * seconds)
            stop_worker(worker)
            lags = [
                (arrived - _epoch(at)) * 1000
                for arrived, at in receiver.arrivals.values()
            ]
            without_rps, without_latency = paced_load(
                settings.port, HOOK_RATE, seconds, f"{kind}-without"
            )
            first_count = receiver.count()
            worker = start_worker(database)
            wait_for(receiver, first_count + 1)
            began = time.monotonic()
            wait_for(receiver, first_count + HOOK_RATE * seconds)
            elapsed = time.monotonic() - began
            stop_worker(worker)
        finally:
            service.stop()
            receiver.stop()
        backlog = HOOK_RATE * seconds
        runs.append(
            WebhookRun(
                kind,
                HOOK_RATE,
                seconds,
                with_rps,
                statistics.median(with_latency),
                percentile(with_latency, 0.99),
                without_rps,
                statistics.median(without_latency),
                percentile(without_latency, 0.99),
                statistics.median(lags),
                percentile(lags, 0.99),
                backlog,
                (backlog - 1) / elapsed,
                receiver.unverified,
            )
        )
        log(f"  {runs[-1]}")
    return runs


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def webhook_report(runs: list[WebhookRun]) -> list[str]:
    lines = [
        "## Webhooks",
        "",
        "One endpoint, one delivery worker, a local receiver verifying every"
        " signature (standardwebhooks). Identify at a paced rate, each request a"
        " brand-new customer (one event), with the worker running and without;"
        " lag from each event's `at` to its arrival; then the backlog left by"
        " the run without the worker, delivered by one worker (events/s from its"
        " first delivery to its last).",
        "",
        "| database | identify/s asked | identify p50 / p99 ms, worker running"
        " | identify p50 / p99 ms, no worker | lag p50 / p99 ms"
        " | backlog delivered, events/s | unverified |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.database} | {run.rate} ({run.with_worker_rps:.0f} and"
            f" {run.without_worker_rps:.0f} reached)"
            f" | {run.with_worker_p50_ms:.1f} / {run.with_worker_p99_ms:.1f}"
            f" | {run.without_worker_p50_ms:.1f} / {run.without_worker_p99_ms:.1f}"
            f" | {run.lag_p50_ms:.0f} / {run.lag_p99_ms:.0f}"
            f" | {run.delivered_per_second:.0f} ({run.backlog:,} events)"
            f" | {run.unverified} |"
        )
    lines.append("")
    return lines
