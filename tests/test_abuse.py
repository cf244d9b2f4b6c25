"""Clients that misbehave on purpose, against real gunicorn with the
production settings: they must not keep others from being served."""

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests

from live import live_service

SERVED_WITHIN = 5.0


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


def test_a_body_that_stops_arriving_is_refused_and_frees_its_thread(
    tmp_path: Path,
) -> None:
    one_thread = {"WEB_THREADS": "1"}
    with live_service(tmp_path, workers=1, env=one_thread) as url:
        with socket.create_connection(address_of(url)) as client:
            client.sendall(
                b"POST /identify HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            client.settimeout(30)
            head = client.recv(4096)
        served = requests.get(f"{url}/health", timeout=SERVED_WITHIN)

    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/problem+json" in head
    assert served.status_code == 200
