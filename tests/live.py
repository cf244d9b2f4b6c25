"""A live service for the operations tests: real gunicorn on a migrated SQLite
file, on a port of 38000-38999 (the range these tests may use)."""

import random
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from conftest import gunicorn, migrate

PORTS = range(38000, 39000)


def free_port() -> int:
    """A port of PORTS that nothing listens on right now."""
    for port in random.sample(PORTS, len(PORTS)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("every port of 38000-38999 is taken")


@contextmanager
def live_service(
    directory: Path,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int = subprocess.DEVNULL,
) -> Iterator[str]:
    """Serve a fresh database in `directory`; yield the base URL."""
    url = f"sqlite:///{directory / 'contacts.db'}"
    migrate(url)
    settings = {"PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics"), **(env or {})}
    with gunicorn(url, free_port(), workers, settings, stdout) as base_url:
        yield base_url
