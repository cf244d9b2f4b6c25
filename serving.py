"""The gunicorn worker that serves the app (gunicorn.conf.py: worker_class).

gunicorn's threaded worker (gthread), changed so that no client can hold a
thread: the main loop reads each request, head and body, as its bytes come,
without a thread, and hands it to a thread only once all of it has arrived.
A thread never waits for a client; it only writes the answer (within
ANSWER_TIMEOUT per write).

- A head (request line and headers) must be complete within `keepalive`
  seconds of connecting, or of the previous answer; its body, within
  REQUEST_BODY_TIMEOUT seconds of the head (settings.request_body_timeout()),
  however steadily its bytes trickle. Otherwise: 408, and the connection is
  closed. Counted from the head, a request has at most keepalive +
  REQUEST_BODY_TIMEOUT to arrive, and a kept-alive connection's tenth
  request as long as its first.
- A body announced larger than MAX_BODY_BYTES is not waited for: the app
  answers from the head (401, 413) and the connection is closed after it.
  A chunked body that grows larger gets a 413 here.
- A worker whose threads are all busy accepts no new connection, so another
  worker with a free thread takes it.
- Connections are closed without blocking the loop: after the last answer
  the loop reads and drops what the client still sends, for LINGER seconds
  at most, so that the answer is not lost to a reset.

The errors gunicorn answers itself are problem documents, never HTML pages.
TLS is left to the platform's router: with gunicorn's own TLS the worker
behaves as gthread, but for accepting only while a thread is free."""

import errno
import json
import re
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.http.body import LengthReader  # type: ignore[import-untyped]
from gunicorn.http.errors import NoMoreData  # type: ignore[import-untyped]
from gunicorn.http.message import Request  # type: ignore[import-untyped]
from gunicorn.http.unreader import IterUnreader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import (  # type: ignore[import-untyped]
    STOP_KEEPALIVE_LINGER,
    TConn,
    ThreadWorker,
)

import settings
from validation import MAX_BODY_BYTES

MAX_HEAD_BYTES = 64 * 1024
# Chunk sizes, extensions and trailers add a few bytes per chunk: a chunked
# body that needs as many again as the data is not one a client means.
MAX_CHUNKED_BYTES = 2 * MAX_BODY_BYTES
# gunicorn's own limit on a chunk-size line.
MAX_CHUNK_LINE = 8190
RECEIVE_BYTES = 64 * 1024
END_OF_HEAD = b"\r\n\r\n"
HEX = re.compile(rb"[0-9a-fA-F]+")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
ANSWER_TIMEOUT = 10.0
LINGER = 2.0


@dataclass(frozen=True)
class Ready:
    """The first `size` bytes received are a request for a thread; when
    `body_unread`, only its head: the connection closes after the answer."""

    size: int
    body_unread: bool = False


@dataclass(frozen=True)
class Refused:
    """The request gets `status` from the loop, and the connection closes."""

    status: HTTPStatus
    detail: str | None = None


class MalformedChunks(ValueError):
    """A chunked body that is not well formed."""


class TooLarge(ValueError):
    """A chunked body over MAX_BODY_BYTES."""


class Chunks:
    """Where a chunked body that starts at `start` ends, found as its bytes
    come: each call resumes where the previous one stopped. Trailers are
    bounded by MAX_CHUNKED_BYTES, like the rest of the body."""

    def __init__(self, start: int) -> None:
        self.position = start
        self.data_left = 0
        self.in_trailers = False
        self.size = 0

    def end(self, data: bytearray) -> int | None:
        """The offset just past the body in `data`, or None while it is not
        all there. Raises TooLarge or MalformedChunks."""
        while True:
            if self.in_trailers:
                return self.trailers_end(data)
            if self.data_left:
                after = self.position + self.data_left
                if len(data) < after + 2:
                    return None
                if data[after : after + 2] != b"\r\n":
                    raise MalformedChunks
                self.position, self.data_left = after + 2, 0
            line_end = data.find(b"\r\n", self.position)
            if line_end < 0:
                if len(data) - self.position > MAX_CHUNK_LINE:
                    raise MalformedChunks
                return None
            digits = bytes(data[self.position : line_end]).split(b";", 1)[0]
            if not HEX.fullmatch(digits.rstrip(b" \t")):
                raise MalformedChunks
            size = int(digits, 16)
            self.size += size
            if self.size > MAX_BODY_BYTES:
                raise TooLarge
            self.position = line_end + 2
            self.data_left = size
            self.in_trailers = size == 0

    def trailers_end(self, data: bytearray) -> int | None:
        if data[self.position : self.position + 2] == b"\r\n":
            return self.position + 2
        end = data.find(END_OF_HEAD, self.position)
        return end + 4 if end >= 0 else None


class Incoming:
    """What a connection has received and not yet handed on: the bytes of
    its next request, and of any the client sent after it."""

    def __init__(self, cfg: Any, peer: Any) -> None:
        self.cfg = cfg
        self.peer = peer
        self.received = bytearray()
        self.request = b""
        self.served = 0
        self.next_request()

    def next_request(self) -> None:
        self.searched = 0
        self.head_end = 0
        self.body_length = 0
        self.chunks: Chunks | None = None
        self.expects_continue = False

    def take(self) -> Ready | Refused | None:
        """The first request once it has arrived whole, or its refusal; None
        while it is still on its way. Ready and Refused end the request:
        what follows in `received` is the next one's."""
        if not self.head_end and not self.find_head():
            if len(self.received) > MAX_HEAD_BYTES:
                return self.done(Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))
            return None
        if not self.head_end:
            # gunicorn refuses this head: a thread answers as gthread would.
            return self.done(Ready(self.searched, body_unread=True))
        if self.chunks is None:
            if self.body_length > MAX_BODY_BYTES:
                return self.done(Ready(self.head_end, body_unread=True))
            end = self.head_end + self.body_length
            return self.done(Ready(end)) if len(self.received) >= end else None
        try:
            chunks_end = self.chunks.end(self.received)
        except TooLarge:
            return self.done(too_large())
        except MalformedChunks:
            return self.done(Refused(HTTPStatus.BAD_REQUEST))
        if chunks_end is None:
            if len(self.received) - self.head_end > MAX_CHUNKED_BYTES:
                return self.done(too_large())
            return None
        if not self.gunicorn_reads_to(chunks_end):
            return self.done(Refused(HTTPStatus.BAD_REQUEST))
        return self.done(Ready(chunks_end))

    def find_head(self) -> bool:
        """Look for the end of the head in what arrived since the last look.
        True once found: then either `head_end` and the body's framing are
        set, or the head is refused and `searched` is its end."""
        while True:
            end = self.received.find(END_OF_HEAD, max(self.searched - 3, 0))
            if end < 0:
                self.searched = len(self.received)
                return False
            self.searched = end + 4
            try:
                request, _ = self.parse(self.searched)
            except NoMoreData:
                continue
            except Exception:
                return True
            self.head_end = self.searched
            reader = request.body.reader
            if isinstance(reader, LengthReader):
                self.body_length = int(reader.length)
            else:
                self.chunks = Chunks(self.head_end)
            self.expects_continue = request._expected_100_continue
            return True

    def gunicorn_reads_to(self, end: int) -> bool:
        """Whether gunicorn reads the chunked body found here to the same
        end, and accepts it: a thread must neither wait nor stop early."""
        try:
            request, unreader = self.parse(end)
            request.body.read()
        except Exception:
            return False
        return not unreader.read()

    def parse(self, end: int) -> tuple[Any, Any]:
        """gunicorn's request from the first `end` bytes received, and the
        unreader that holds what it has not read of them."""
        unreader = IterUnreader([bytes(self.received[:end])])
        # The number matters to gunicorn for the first request only (PROXY).
        return Request(self.cfg, unreader, self.peer, self.served + 1), unreader

    def done(self, outcome: Ready | Refused) -> Ready | Refused:
        if isinstance(outcome, Ready):
            self.request = bytes(self.received[: outcome.size])
            del self.received[: outcome.size]
            self.served += 1
        self.next_request()
        return outcome


def too_large() -> Refused:
    return Refused(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"The request body must be at most {MAX_BODY_BYTES // 1024} KiB.",
    )


class Connection(TConn):  # type: ignore[misc]
    """A client connection, with what the loop has received on it and the
    deque of connections it waits in while no thread serves it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.incoming = Incoming(self.cfg, self.client)
        self.waiting: deque[Connection] | None = None
        self.body_unread = False


class Worker(ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_timeout = settings.request_body_timeout()
        self.bodies: deque[Connection] = deque()
        self.closing: deque[Connection] = deque()
        self.busy = 0

    def accept(self, listener: socket.socket) -> None:
        """Wait for a new connection's request on the poller.

        gthread hands it to a thread that waits up to 5 s for its first
        bytes, so a few idle connections per thread kept every other request
        waiting."""
        if self.cfg.is_ssl:
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        conn = Connection(self.cfg, client, address, listener.getsockname())
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.wait(conn, self.pending_conns, self.on_pending_socket_readable)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Accept only while a thread is free: a connection accepted by a
        worker whose threads are all busy waits for one of them, while
        another worker may have a thread free."""
        super().set_accept_enabled(enabled and self.busy < self.cfg.threads)

    def enqueue_req(self, conn: TConn) -> None:
        self.busy += 1
        if self.busy >= self.cfg.threads:
            self.set_accept_enabled(False)
        super().enqueue_req(conn)

    def on_pending_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().on_pending_socket_readable(conn, client)
            return
        self.receive(conn)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.receive(conn)

    def receive(self, conn: Connection) -> None:
        """Read what `conn` sent, without blocking; hand its request to a
        thread once complete."""
        try:
            data = conn.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop_waiting(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.incoming.received += data
        self.serve_when_complete(conn)

    def serve_when_complete(self, conn: Connection) -> None:
        outcome = conn.incoming.take()
        if outcome is None:
            if conn.incoming.head_end and conn.waiting is not self.bodies:
                self.wait_for_body(conn)
            return
        self.stop_waiting(conn)
        if isinstance(outcome, Refused):
            send_problem(conn.sock, outcome.status, outcome.detail)
            self.hang_up(conn)
            return
        conn.body_unread = outcome.body_unread
        self.enqueue_req(conn)

    def wait_for_body(self, conn: Connection) -> None:
        """Give the body its own deadline, from the end of the head."""
        assert conn.waiting is not None
        conn.waiting.remove(conn)
        conn.timeout = time.monotonic() + self.body_timeout
        conn.waiting = self.bodies
        self.bodies.append(conn)
        if conn.incoming.expects_continue:
            # gunicorn sends it from the thread that reads the body, which
            # here is the loop.
            try:
                conn.sock.send(CONTINUE)
            except OSError:
                pass

    def wait(
        self,
        conn: Connection,
        waiting: deque[Connection],
        callback: Callable[[Connection, socket.socket], None],
    ) -> None:
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(callback, conn))
        conn.waiting = waiting
        waiting.append(conn)

    def stop_waiting(self, conn: Connection) -> None:
        assert conn.waiting is not None
        conn.waiting.remove(conn)
        conn.waiting = None
        self.poller.unregister(conn.sock)

    def handle(self, conn: TConn) -> Any:
        """Serve one request in a thread, from the bytes the loop received."""
        if not self.cfg.is_ssl:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader = IterUnreader([conn.incoming.request])
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        """Serve a request whose head, and body unless announced too large,
        have arrived. Each write of its answer (with gunicorn's TLS, each
        read of its body too) must be taken within ANSWER_TIMEOUT."""
        if not self.cfg.is_ssl:
            # The loop answered it already, or the body came without waiting.
            req._expected_100_continue = False
            if conn.body_unread:
                req.force_close()
        conn.sock.settimeout(ANSWER_TIMEOUT)
        return super().handle_request(req, conn)

    def finish_request(self, conn: TConn, fs: Future[Any]) -> None:
        """Back on the loop once a thread answered: wait for the next request
        on `conn`, or close it."""
        self.busy -= 1
        if self.cfg.is_ssl:
            super().finish_request(conn, fs)
            return
        keepalive = not fs.cancelled() and fs.exception() is None and fs.result()
        if not keepalive:
            self.hang_up(conn)
            return
        conn.sock.setblocking(False)
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.wait(conn, self.keepalived_conns, self.on_client_socket_readable)
        # A pipelining client may have sent all of its next request already.
        if conn.incoming.received:
            self.serve_when_complete(conn)

    def hang_up(self, conn: Connection) -> None:
        """Close `conn` once the client has read the answer: shut our side,
        then drop what the client still sends until it closes, for LINGER
        seconds at most (gthread blocks its loop for this)."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.timeout = time.monotonic() + LINGER
        self.wait(conn, self.closing, self.on_closing_socket_readable)

    def on_closing_socket_readable(
        self, conn: Connection, client: socket.socket
    ) -> None:
        try:
            if client.recv(RECEIVE_BYTES):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.stop_waiting(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        if self.cfg.is_ssl:
            super().murder_pending()
            return
        self.expire(self.pending_conns)
        self.expire(self.bodies)
        self.expire(self.closing)

    def murder_keepalived(self, force: bool = False) -> None:
        if self.cfg.is_ssl or force:
            super().murder_keepalived(force)
            return
        self.expire(self.keepalived_conns)

    def expire(self, waiting: deque[Connection]) -> None:
        """Close the connections of `waiting` past their timeout (the first
        ones), answering 408 on those that had started a request."""
        now = time.monotonic()
        while waiting and waiting[0].timeout <= now:
            conn = waiting[0]
            self.stop_waiting(conn)
            if waiting is not self.closing and conn.incoming.received:
                send_problem(conn.sock, HTTPStatus.REQUEST_TIMEOUT)
                self.hang_up(conn)
            else:
                self.nr_conns -= 1
                conn.close()

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Any) -> None:
        """gunicorn's own answer to a request it refused (bad request line or
        header, headers too large, an error outside the app), as a problem
        document: gunicorn decides the status, the page it writes is dropped."""
        super().handle_error(req, ProblemSocket(client), addr, exc)


class ProblemSocket:
    """Stands in for the client's socket while gunicorn writes an error page:
    reads the status from it and sends a problem document instead. The page
    may quote the request, which is not echoed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def sendall(self, page: bytes) -> None:
        send_problem(self.sock, HTTPStatus(int(page.split(b" ", 2)[1])))


def send_problem(
    sock: socket.socket, status: HTTPStatus, detail: str | None = None
) -> None:
    """Write `status` as a problem document before the connection is closed;
    a client that is gone already is not an error."""
    body = json.dumps(
        {
            "type": "about:blank",
            "status": status.value,
            "title": status.phrase,
            "detail": f"{detail or status.description + '.'} The request was refused"
            " before the service read it; nothing was changed.",
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        sock.sendall(head + body)
    except OSError:
        pass
