"""A real webhook receiver for the delivery tests: an HTTP server on
127.0.0.1, in a thread, that verifies every request's signature with the
standardwebhooks package and answers as the test tells it; and what the
webhook tests share (the secret key, a merge to deliver)."""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flask.testing import FlaskClient
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

KEY = "test-webhook-secret-key-of-at-least-32-characters"


def identify(client: FlaskClient, email: str | None, phone: str | None) -> Any:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200
    return response.get_json()["contact"]


def merged(client: FlaskClient) -> None:
    """created, created, merged: events 1, 2 and 3."""
    identify(client, "george@hillvalley.edu", "919191")
    identify(client, "biffsucks@hillvalley.edu", "717171")
    identify(client, "george@hillvalley.edu", "717171")


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The secrets (by index in Receiver.secrets) whose signature verified.
    verified_by: list[int]
    payload: Any


@dataclass
class Receiver:
    """What the receiver got, and how it answers: `answer(request)` gives
    (status, headers); while `hold` is clear, requests wait for it."""

    url: str
    secrets: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], tuple[int, dict[str, str]]] = lambda _: (204, {})
    hold: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[str, int] = field(default_factory=dict)
    most_in_flight: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, body: bytes, headers: dict[str, str]) -> tuple[list[int], Any]:
        verified, payload = [], None
        for index, secret in enumerate(self.secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        return verified, payload

    def wait_for(
        self, condition: Callable[[list[Received]], bool], seconds: float = 30
    ) -> list[Received]:
        """The requests received once `condition` holds for them."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                seen = list(self.received)
            if condition(seen):
                return seen
            time.sleep(0.02)
        raise AssertionError(f"the receiver never saw what was awaited: {seen}")


@contextmanager
def receiver(
    port: int = 0,
    secrets: list[str] | None = None,
    answer: Callable[[Received], tuple[int, dict[str, str]]] | None = None,
) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (`port`, or any free one), verifying
    with `secrets` and answering with `answer` from its first request."""
    state: Receiver | None = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            assert state is not None
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            verified, payload = state.verify(body, headers)
            request = Received(
                self.path, headers, body, time.monotonic(), verified, payload
            )
            with state.lock:
                state.in_flight[self.path] = state.in_flight.get(self.path, 0) + 1
                state.most_in_flight[self.path] = max(
                    state.most_in_flight.get(self.path, 0), state.in_flight[self.path]
                )
            state.arrived.set()
            state.hold.wait(60)
            status, extra = state.answer(request)
            with state.lock:
                state.in_flight[self.path] -= 1
                state.received.append(request)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    state = Receiver(f"http://127.0.0.1:{server.server_address[1]}", secrets or [])
    if answer is not None:
        state.answer = answer
    state.hold.set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.hold.set()
        server.shutdown()
        server.server_close()
