"""The gunicorn worker that serves the app (gunicorn.conf.py: worker_class).

gunicorn's threaded worker (gthread), changed so that no client can hold a
thread before its request has arrived: the main loop reads each request's
head (request line and headers) as its bytes come, without a thread, and
hands the connection to a thread only once the head is complete. A client
that has not sent a complete head within `keepalive` seconds of connecting,
or of its previous response, gets a 408 and is closed. The errors gunicorn
answers itself are problem documents, never HTML pages. TLS is left to the
platform's router: with gunicorn's own TLS the worker behaves as gthread."""

import errno
import json
import selectors
import socket
import time
from collections.abc import Iterable
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.workers.gthread import (  # type: ignore[import-untyped]
    TConn,
    ThreadWorker,
)

# A head this large goes to a thread as it is: the parser refuses it (431).
MAX_HEAD_BYTES = 64 * 1024
END_OF_HEAD = b"\r\n\r\n"
BODY_TIMEOUT = 10.0


class Worker(ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads: dict[TConn, bytes] = {}

    def accept(self, listener: socket.socket) -> None:
        """Wait for a new connection's first bytes on the poller.

        gthread hands it to a thread that waits up to 5 s for them, so a few
        idle connections per thread kept every other request waiting."""
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(
            client, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )

    def on_pending_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        if self.head_arrived(conn):
            super().on_pending_socket_readable(conn, client)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        if self.head_arrived(conn):
            super().on_client_socket_readable(conn, client)

    def head_arrived(self, conn: TConn) -> bool:
        """Read what `conn` sent without blocking; True once a thread should
        take over: the head is complete, too large, or the client is gone."""
        if self.cfg.is_ssl:
            return True
        try:
            data = conn.sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        head = self.heads.get(conn, b"") + data
        self.heads[conn] = head
        return not data or END_OF_HEAD in head or len(head) > MAX_HEAD_BYTES

    def handle(self, conn: TConn) -> Any:
        """Serve one request in a thread, from the head read so far."""
        head = self.heads.pop(conn, b"")
        if head:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        """Serve a request whose head has arrived. Its body, read by the app,
        and its answer must each move within BODY_TIMEOUT: a client that
        stalls holds the thread that long, not forever."""
        conn.sock.settimeout(BODY_TIMEOUT)
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        self.refuse_late_heads(self.pending_conns)
        super().murder_pending()

    def murder_keepalived(self, force: bool = False) -> None:
        if not force:
            self.refuse_late_heads(self.keepalived_conns)
        super().murder_keepalived(force)

    def refuse_late_heads(self, conns: Iterable[TConn]) -> None:
        """Answer 408 on the connections about to be closed (those past their
        timeout, first in `conns`) that had started a request."""
        now = time.monotonic()
        for conn in conns:
            if conn.timeout > now:
                return
            if self.heads.pop(conn, b""):
                send_problem(conn.sock, HTTPStatus.REQUEST_TIMEOUT)

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


def send_problem(sock: socket.socket, status: HTTPStatus) -> None:
    """Write `status` as a problem document before the connection is closed;
    a client that is gone already is not an error."""
    body = json.dumps(
        {
            "type": "about:blank",
            "status": status.value,
            "title": status.phrase,
            "detail": f"{status.description}. The request was refused before the"
            " service read it; nothing was changed.",
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
