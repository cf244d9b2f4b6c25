"""gunicorn settings, from the environment as settings.py reads it
(docs/operating.md: "Configuration")."""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import guard
import settings

# A setting the app would refuse stops gunicorn here, before any worker boots.
try:
    _api_keys = settings.api_keys()
    _database = settings.database_url()
    settings.sqlite_synchronous()
    settings.request_body_timeout()
    _threads = settings.web_threads()
    settings.database_pool_size()
    _workers = settings.web_concurrency()
    _metrics_dir = settings.metrics_dir()
    _guard = guard.configured()
except settings.ConfigurationError as error:
    raise SystemExit(f"Not starting: {error}") from None


def _erasure_key_problem() -> str | None:
    """guard.erasure_key_problem on the database, when it can be read now;
    /health checks it again while the service runs."""
    timeout = {"connect_timeout": 5} if _database.startswith("postgresql") else {}
    engine = create_engine(_database, poolclass=NullPool, connect_args=timeout)
    try:
        with engine.connect() as connection:
            return guard.erasure_key_problem(connection, _guard)
    except DBAPIError:
        return None
    finally:
        engine.dispose()


_refused = _erasure_key_problem()
if _refused is not None:
    raise SystemExit(f"Not starting: {_refused}")

bind = settings.bind()
workers = _workers
# Threads, each serving one request at a time, so that a slow or idle client
# never holds a whole process; serving.py keeps them from being held too.
worker_class = "serving.Worker"
threads = _threads
# How long a connection may stay open between requests, or before its first.
keepalive = 5
# The app writes one JSON line per request itself (observability.py).
accesslog = None
# gunicorn's own messages as masked JSON lines too: they may quote a request.
logger_class = "masking.GunicornLogger"
# SIGTERM stops accepting, lets requests in flight finish, then exits.
graceful_timeout = 20
# gunicorn's control socket has one path per user ($HOME/.gunicorn/gunicorn.ctl)
# shared by every instance on the host, and stopping one deletes another's.
# Nothing here uses gunicornc; signals control gunicorn.
control_socket_disable = True

# Workers share their metrics through files in this directory. It must be set
# before prometheus_client is first imported: here, only inside child_exit.
# The workers (the app's settings and prometheus_client) read it from the
# environment, so a directory made here is written there.
_own_metrics_dir = _metrics_dir is None
if _metrics_dir is None:
    _metrics_dir = tempfile.mkdtemp(prefix="identify-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server: Any) -> None:
    """Start the metrics from zero: files left by an earlier run would be summed in."""
    directory = Path(_metrics_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink()
    server.log.info("Serving the %s", settings.describe_database(_database))
    if settings.port_set() and _database.startswith("sqlite"):
        server.log.warning(
            "PORT is set, as a hosting platform sets it, but the database is a"
            " SQLite file: on most platforms that file is lost at every deploy."
            " Set DATABASE_URL to a PostgreSQL database."
        )
    if not _api_keys:
        server.log.warning(
            "API_KEYS is not set: every endpoint is open to anyone who can reach it."
        )


def child_exit(server: Any, worker: Any) -> None:
    """Drop the dead worker's live gauges; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory made above; one that was given is kept."""
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
