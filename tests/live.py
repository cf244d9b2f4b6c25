"""A live service for the operations tests: real gunicorn on a migrated SQLite
file, on a free port."""

import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from conftest import gunicorn, migrate


def free_port() -> int:
    """A port nothing listens on right now, chosen by the system."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def live_service(
    directory: Path,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.PIPE,
) -> Iterator[str]:
    """Serve a fresh database in `directory`; yield the base URL."""
    url = f"sqlite:///{directory / 'contacts.db'}"
    migrate(url)
    settings = {"PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"), **(env or {})}
    with gunicorn(url, free_port(), workers, settings, stdout, stderr) as base_url:
        yield base_url


def send_raw(url: str, request: bytes) -> bytes:
    """Send `request` to the server at `url` as it is; return all it answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(request)
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer
