"""Bytes that are not a request the service can read, sent to real gunicorn:
each gets a problem document, never a crash, a cut body or an HTML page."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from live import live_service, send_raw

MAX_BODY = 64 * 1024
SECRET = b"person@fluxkart.com"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_service(tmp_path_factory.mktemp("bad-bytes")) as base_url:
        yield base_url


def raw_exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` as it is; return the answer's head and body."""
    head, _, body = send_raw(url, request).partition(b"\r\n\r\n")
    return head, body


def padded_body(size: int) -> bytes:
    body = b'{"email": "doc@fluxkart.com"}'
    return body + b" " * (size - len(body))


def chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]


def assert_problem(head: bytes, body: bytes, status: int) -> dict[str, Any]:
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nContent-Type: application/problem+json" in head
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status
    return problem


def test_json_nested_too_deep_is_a_400_problem(url: str) -> None:
    response = requests.post(
        f"{url}/identify",
        data="[" * 30_000 + "]" * 30_000,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "nested too deeply" in response.json()["detail"]


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY, 200), (MAX_BODY + 1, 413)])
def test_chunked_body_over_64_kib_is_refused_not_cut(
    url: str, size: int, status: int
) -> None:
    response = requests.post(
        f"{url}/identify",
        data=chunks(padded_body(size)),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == status


CHUNKED = (
    b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",
        b"0x2\r\n{}\r\n0\r\n\r\n",
        b"2\r\n{}XX0\r\n\r\n",
        b"2;\x01\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["size-not-hex", "size-0x", "chunk-not-terminated", "bad-extension"],
)
def test_a_malformed_chunked_body_is_a_400_problem(url: str, body: bytes) -> None:
    head, answer = raw_exchange(url, CHUNKED + body)

    assert_problem(head, answer, 400)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + SECRET + b" HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX-Customer " + SECRET + b"\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nX-Big: " + SECRET * 500 + b"\r\n\r\n", 431),
        (b"GET /" + SECRET * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /" + SECRET + b" HTTP/7.1\r\nHost: x\r\n\r\n", 400),
    ],
    ids=["request-line", "header-name", "header-too-large", "long-uri", "version"],
)
def test_requests_gunicorn_refuses_get_a_problem_document_not_a_page(
    url: str, request_bytes: bytes, status: int
) -> None:
    head, body = raw_exchange(url, request_bytes)

    assert_problem(head, body, status)
    assert b"<html" not in body
    assert SECRET not in head + body
