"""Clients that misbehave on purpose, against real gunicorn with the
production settings: they must not keep others from being served."""

import json
import select
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from live import live_service

# Every test here bounds how long an answer may take: they run one after
# another on one xdist worker, not beside each other.
pytestmark = pytest.mark.xdist_group("serial")

SERVED_WITHIN = 5.0
# What a normal request may take beside misbehaving clients: nothing waits on them.
ANSWERED_WITHIN = 1.0
API_KEY = "abuse-test-key"
# The deadline for a request body in the tests that wait for it (production: 10 s).
BODY_DEADLINE = 2.0


@contextmanager
def idle_connections(base_url: str, count: int) -> Iterator[None]:
    """Keep `count` connections open that never send a byte, reopening each
    one the server closes, as an attacker would."""
    address = address_of(base_url)
    stop = threading.Event()

    def hold() -> None:
        with selectors.DefaultSelector() as selector:
            for _ in range(count):
                selector.register(
                    socket.create_connection(address), selectors.EVENT_READ
                )
            while not stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    closed = key.fileobj
                    assert isinstance(closed, socket.socket)
                    selector.unregister(closed)
                    closed.close()
                    selector.register(
                        socket.create_connection(address), selectors.EVENT_READ
                    )
            for key in list(selector.get_map().values()):
                assert isinstance(key.fileobj, socket.socket)
                key.fileobj.close()

    with running(hold, stop):
        yield


@contextmanager
def slow_header_clients(base_url: str, count: int) -> Iterator[None]:
    """`count` clients sending a request's headers one byte a second, forever,
    reconnecting when the server gives up on them."""
    address = address_of(base_url)
    stop = threading.Event()

    def send_slowly() -> None:
        while not stop.is_set():
            with socket.create_connection(address) as client:
                try:
                    client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    while not stop.wait(1.0):
                        client.sendall(b"X")
                except OSError:
                    continue

    threads = [threading.Thread(target=send_slowly) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@contextmanager
def slow_body_clients(base_url: str, count: int, key: str | None) -> Iterator[None]:
    """`count` clients that each announce a 60,000-byte body (sending `key`
    as their API key, or none) and then send it one byte every 2 s,
    reconnecting when the server answers or closes."""
    address = address_of(base_url)
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        "POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: 60000\r\n{authorization}\r\n"
    ).encode()
    stop = threading.Event()

    def connect() -> socket.socket:
        client = socket.create_connection(address)
        client.sendall(head + b"{")
        return client

    def trickle() -> None:
        clients = [connect() for _ in range(count)]
        while not stop.wait(2.0):
            answered, _, _ = select.select(clients, [], [], 0)
            for n, client in enumerate(clients):
                try:
                    if client in answered:
                        raise ConnectionResetError
                    client.sendall(b" ")
                except OSError:
                    client.close()
                    clients[n] = connect()
        for client in clients:
            client.close()

    with running(trickle, stop):
        yield


def normal_requests(base_url: str, seconds: float, key: str | None) -> list[float]:
    """POST /identify and POST /customers/lookup in turn for `seconds`; how
    long each took. Each must be answered 200."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"email": "doc@fluxkart.com"}
    waits = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/identify", "/customers/lookup"):
            started = time.monotonic()
            response = requests.post(
                f"{base_url}{path}", json=body, headers=headers, timeout=SERVED_WITHIN
            )
            waits.append(time.monotonic() - started)
            assert response.status_code == 200, (path, response.text)
        time.sleep(0.2)
    return waits


def read_until_closed(client: socket.socket, seconds: float) -> bytes:
    """Everything the server sends on `client` until it closes the connection,
    which it must do within `seconds`."""
    client.settimeout(seconds)
    answer = b""
    while chunk := client.recv(4096):
        answer += chunk
    return answer


def assert_problem(answer: bytes, status: int) -> None:
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == status


@contextmanager
def running(target: object, stop: threading.Event) -> Iterator[None]:
    assert callable(target)
    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def address_of(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def test_idle_and_slow_clients_do_not_keep_normal_requests_waiting(
    tmp_path: Path,
) -> None:
    with (
        live_service(tmp_path, workers=4) as url,
        idle_connections(url, 50),
        slow_header_clients(url, 10),
    ):
        time.sleep(1)
        waits = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = requests.post(
                f"{url}/identify",
                json={"email": "doc@fluxkart.com"},
                timeout=SERVED_WITHIN,
            )
            waits.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.5)

    assert max(waits) < SERVED_WITHIN


def test_a_request_head_that_stops_arriving_is_answered_408_problem(
    tmp_path: Path,
) -> None:
    with (
        live_service(tmp_path) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Wait")
        client.settimeout(SERVED_WITHIN * 3)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk

    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == 408


@pytest.mark.parametrize(
    ("api_keys", "slow_key"),
    [(None, None), (API_KEY, API_KEY), (API_KEY, None)],
    ids=["open-service", "slow-clients-with-key", "slow-clients-without-key"],
)
def test_normal_requests_are_answered_within_1_s_beside_50_slow_bodies(
    tmp_path: Path, api_keys: str | None, slow_key: str | None
) -> None:
    env = {"API_KEYS": api_keys} if api_keys else {}
    with (
        live_service(tmp_path, env=env) as url,
        slow_body_clients(url, 50, slow_key),
    ):
        time.sleep(1)
        waits = normal_requests(url, 4, api_keys)

    assert max(waits) < ANSWERED_WITHIN, f"slowest of {len(waits)}: {max(waits):.2f} s"


def test_a_body_that_stops_arriving_is_answered_408_and_holds_no_thread(
    tmp_path: Path,
) -> None:
    one_thread = {"WEB_THREADS": "1", "REQUEST_BODY_TIMEOUT": str(BODY_DEADLINE)}
    with (
        live_service(tmp_path, workers=1, env=one_thread) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(
            b"POST /identify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        served = requests.get(f"{url}/health", timeout=ANSWERED_WITHIN)
        answer = read_until_closed(client, BODY_DEADLINE + SERVED_WITHIN)
        closed_after = time.monotonic() - started

    assert served.status_code == 200
    assert_problem(answer, 408)
    assert closed_after < BODY_DEADLINE + 1


def test_a_body_trickling_past_the_deadline_is_answered_408_and_closed(
    tmp_path: Path,
) -> None:
    """The deadline is for the whole body, however steadily its bytes come."""
    deadline = {"REQUEST_BODY_TIMEOUT": str(BODY_DEADLINE)}
    with (
        live_service(tmp_path, workers=1, env=deadline) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(
            b"POST /identify HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        while not select.select([client], [], [], 0.25)[0]:
            assert time.monotonic() - started < BODY_DEADLINE + SERVED_WITHIN
            client.sendall(b" ")
        answer = read_until_closed(client, SERVED_WITHIN)
        closed_after = time.monotonic() - started

    assert_problem(answer, 408)
    assert closed_after < BODY_DEADLINE + 1


def post_identify(email: str, *, chunked: bool = False, extra: str = "") -> bytes:
    """The bytes of a POST /identify for `email`, its body sent with a
    Content-Length or in two chunks."""
    body = json.dumps({"email": email}).encode()
    head = (
        "POST /identify HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\n{extra}"
    )
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    half = len(body) // 2
    return (
        f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (half, body[:half], len(body) - half, body[half:])
    )


def responses(answer: bytes) -> list[tuple[int, Any]]:
    """The status and JSON body of each response in `answer`, in order."""
    found = []
    while answer:
        head, rest = answer.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
        body, answer = rest[:length], rest[length:]
        found.append((int(head.split(b" ")[1]), json.loads(body)))
    return found


def test_pipelined_requests_with_bodies_are_answered_in_order(tmp_path: Path) -> None:
    """Requests sent back to back on one connection (a chunked body among
    them, the third cut in two sends) are each answered on it, in order."""
    third = post_identify("third@shop.com")
    with (
        live_service(tmp_path, workers=1) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(
            post_identify("first@shop.com")
            + post_identify("second@shop.com", chunked=True)
            + third[:70]
        )
        time.sleep(0.5)
        client.sendall(
            third[70:] + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = read_until_closed(client, SERVED_WITHIN)

    (first, second, third_answer, health) = responses(answer)
    assert first[0] == second[0] == third_answer[0] == health[0] == 200
    assert first[1]["contact"]["emails"] == ["first@shop.com"]
    assert second[1]["contact"]["emails"] == ["second@shop.com"]
    assert third_answer[1]["contact"]["emails"] == ["third@shop.com"]


def test_a_pipelined_request_that_stops_arriving_holds_no_thread(
    tmp_path: Path,
) -> None:
    one_thread = {"WEB_THREADS": "1"}
    with (
        live_service(tmp_path, workers=1, env=one_thread) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(
            post_identify("first@shop.com")
            + b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        )
        client.settimeout(SERVED_WITHIN)
        first = client.recv(65536)
        served = requests.get(f"{url}/health", timeout=ANSWERED_WITHIN)

    assert first.startswith(b"HTTP/1.1 200 ")
    assert served.status_code == 200


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    tmp_path: Path,
) -> None:
    request = post_identify("doc@shop.com", extra="Expect: 100-continue\r\n")
    head, body = request.split(b"\r\n\r\n", 1)
    with (
        live_service(tmp_path, workers=1) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(head + b"\r\nConnection: close\r\n\r\n")
        client.settimeout(SERVED_WITHIN)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += client.recv(4096)
        client.sendall(body)
        answer = read_until_closed(client, SERVED_WITHIN)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    ((status, contact),) = responses(answer)
    assert status == 200
    assert contact["contact"]["emails"] == ["doc@shop.com"]


@pytest.mark.parametrize(
    ("key", "status"), [(None, 401), (API_KEY, 413)], ids=["no-key", "valid-key"]
)
def test_an_answer_that_leaves_the_body_unread_closes_the_connection(
    tmp_path: Path, key: str | None, status: int
) -> None:
    """The body announced is over 64 KiB: it is refused without waiting for
    it, and the connection is closed rather than read to its end."""
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    env = {"API_KEYS": API_KEY, "WEB_THREADS": "1"}
    with (
        live_service(tmp_path, workers=1, env=env) as url,
        socket.create_connection(address_of(url)) as client,
    ):
        client.sendall(
            b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: 100000\r\n{authorization}\r\n".encode()
            + b"{"
        )
        answer = read_until_closed(client, ANSWERED_WITHIN)

    assert_problem(answer, status)
    assert b"\r\nConnection: close\r\n" in answer


def test_a_worker_with_no_free_thread_leaves_new_connections_to_the_others(
    tmp_path: Path,
) -> None:
    """Another connection holds SQLite's write lock, so a writer waits in the
    only thread of one of two workers: that worker accepts no connection
    until it is free, and every lookup meanwhile is served by the other."""
    one_thread = {"WEB_THREADS": "1"}
    with live_service(tmp_path, workers=2, env=one_thread) as url:
        holder = sqlite3.connect(tmp_path / "contacts.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(
            target=requests.post,
            args=(f"{url}/identify",),
            kwargs={"json": {"email": "new@shop.com"}, "timeout": 30},
        )
        writer.start()
        time.sleep(0.5)
        waits = []
        for _ in range(10):
            started = time.monotonic()
            response = requests.post(
                f"{url}/customers/lookup",
                json={"email": "doc@shop.com"},
                timeout=SERVED_WITHIN,
            )
            waits.append(time.monotonic() - started)
            assert response.status_code == 200
        holder.execute("ROLLBACK")
        holder.close()
        writer.join()

    assert max(waits) < ANSWERED_WITHIN, waits
