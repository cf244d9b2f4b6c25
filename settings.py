"""Settings that the service refuses to start without understanding, read from
the environment here and nowhere else (docs/operating.md: "Configuration"). A value it
cannot use stops `create_app()` and gunicorn with a message that says what to
change, rather than running with something the operator did not ask for."""

import os
from multiprocessing import cpu_count
from pathlib import Path

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")
IDENTIFIERS = ("email", "phoneNumber")
# A shorter ERASURE_KEY lets anyone who reads the database guess suppressed values.
MIN_ERASURE_KEY = 16
# Where a relative SQLite path in DATABASE_URL is: the Flask instance folder.
INSTANCE = Path(__file__).resolve().parent / "instance"


class ConfigurationError(ValueError):
    """A setting holds a value the service will not run with."""


def api_keys() -> list[str]:
    """The bearer keys of API_KEYS; none, an open service, only when it is unset."""
    return parse_api_keys(os.environ.get("API_KEYS"))


def parse_api_keys(value: str | None) -> list[str]:
    """The keys of a comma-separated API_KEYS value.

    A value that is set but holds no key ("", ",", " , ") is refused: it
    says the operator meant to set keys, and running open would fail open."""
    if value is None:
        return []
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise ConfigurationError(
            f"API_KEYS is set but holds no key ({value!r}): set it to one or more"
            " comma-separated keys, or unset it to serve without API keys."
        )
    return keys


def sqlite_synchronous() -> str:
    """SQLite's `synchronous` pragma: FULL unless SQLITE_SYNCHRONOUS says NORMAL.

    FULL syncs the WAL at every commit, so an acknowledged write survives an
    OS crash or power loss; NORMAL is faster and may lose the last ones."""
    value = os.environ.get("SQLITE_SYNCHRONOUS", "FULL").strip().upper()
    if value not in SQLITE_SYNCHRONOUS:
        raise ConfigurationError(
            f"SQLITE_SYNCHRONOUS must be FULL (the default: an acknowledged write"
            f" survives power loss) or NORMAL (faster; the last writes may be lost"
            f" on power loss), not {value!r}."
        )
    return value


def request_body_timeout() -> float:
    """Seconds a request's body has to arrive in full once its head has:
    REQUEST_BODY_TIMEOUT, 10 by default."""
    value = os.environ.get("REQUEST_BODY_TIMEOUT", "10")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"REQUEST_BODY_TIMEOUT must be a number of seconds above 0 (the default"
            f" is 10), not {value!r}."
        )
    return seconds


def bind() -> str:
    """Where gunicorn listens: HOST:PORT. A platform that sets only PORT (the
    Procfile route) reaches the service from outside the machine, so then
    every interface is bound; with neither, 127.0.0.1:8000."""
    port = os.environ.get("PORT")
    host = os.environ.get("HOST") or ("0.0.0.0" if port else "127.0.0.1")
    return f"{host}:{port or '8000'}"


def database_url() -> str:
    """DATABASE_URL as SQLAlchemy takes it; by default a SQLite file in the
    instance folder. A relative SQLite path is made absolute (in the instance
    folder, as Flask-SQLAlchemy would), so every process names one file.

    Hosting platforms still hand out "postgres://", which SQLAlchemy rejects;
    both PostgreSQL spellings are served by psycopg 3. Any other engine is
    refused with one line that names the accepted forms, never the URL
    itself: it may hold a password."""
    text = os.environ.get("DATABASE_URL", "sqlite:///contacts.db").strip()
    for scheme in ("postgres://", "postgresql://"):
        if text.startswith(scheme):
            text = "postgresql+psycopg://" + text.removeprefix(scheme)
    try:
        url = make_url(text)
    except ArgumentError:
        url = None
    if url is None or url.drivername not in ("sqlite", "postgresql+psycopg"):
        scheme = text.partition("://")[0] if "://" in text else "none"
        raise ConfigurationError(
            "DATABASE_URL must be sqlite:///PATH (a file) or"
            " postgresql://USER:PASSWORD@HOST:PORT/DATABASE, not a URL with the"
            f" scheme {scheme[:40]!r}."
        )
    if url.drivername == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            INSTANCE.mkdir(exist_ok=True)
            url = url.set(database=str(INSTANCE / path))
    return url.render_as_string(hide_password=False)


def describe_database(url: str) -> str:
    """The engine and database of `url` for a log line: a SQLite file's path,
    or PostgreSQL's database, host, port and user; never the password."""
    parsed: URL = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}"
    return (
        f"PostgreSQL database {parsed.database} on host {parsed.host or 'localhost'}"
        f" port {parsed.port or 5432} as user {parsed.username}"
    )


def web_threads() -> int:
    """WEB_THREADS: threads per gunicorn worker, each serving one request at
    a time; 4 by default."""
    return _whole_number("WEB_THREADS", "4")


def database_pool_size() -> int:
    """DATABASE_POOL_SIZE: PostgreSQL connections kept open per worker, as
    many as its threads (WEB_THREADS) by default.

    Fewer is refused: a thread that found every pooled connection taken
    would open a connection of its own and close it after its request, a
    new PostgreSQL session (a process forked, authenticated and set up)
    every few requests under load."""
    threads = web_threads()
    size = _whole_number("DATABASE_POOL_SIZE", str(threads))
    if size < threads:
        raise ConfigurationError(
            f"DATABASE_POOL_SIZE ({size}) must be at least WEB_THREADS ({threads}):"
            " each thread needs a pooled connection, or requests open and close"
            " PostgreSQL sessions. Raise DATABASE_POOL_SIZE or unset it (it"
            " follows WEB_THREADS), or lower WEB_THREADS for fewer connections."
        )
    return size


def _whole_number(name: str, default: str) -> int:
    text = os.environ.get(name, default).strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ConfigurationError(
            f"{name} must be a whole number of at least 1, not {text!r}."
        )
    return int(text)


def web_concurrency() -> int:
    """WEB_CONCURRENCY: gunicorn's worker processes; twice the CPUs by default."""
    return _whole_number("WEB_CONCURRENCY", str(cpu_count() * 2))


def metrics_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR: where worker processes share their metrics
    (gunicorn.conf.py makes one when it is unset); None serves this process's
    metrics alone."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def builtin_blocklist() -> bool:
    """BUILTIN_BLOCKLIST: whether the built-in rules (guard.BUILTIN_RULES)
    block placeholder values; on by default, off turns them off."""
    value = os.environ.get("BUILTIN_BLOCKLIST", "on").strip().lower()
    if value not in {"on", "off"}:
        raise ConfigurationError(f"BUILTIN_BLOCKLIST must be on or off, not {value!r}.")
    return value == "on"


def identifier_priority() -> tuple[str, str]:
    """IDENTIFIER_PRIORITY: which value a request keeps when a limit refuses
    one, the most important first; email,phoneNumber by default."""
    text = os.environ.get("IDENTIFIER_PRIORITY", ",".join(IDENTIFIERS))
    priority = tuple(part.strip() for part in text.split(","))
    if sorted(priority) != sorted(IDENTIFIERS):
        raise ConfigurationError(
            "IDENTIFIER_PRIORITY must be email,phoneNumber or phoneNumber,email"
            f" (the most important first), not {','.join(priority)!r}."
        )
    return priority[0], priority[1]


def max_values_per_customer() -> int:
    """MAX_VALUES_PER_CUSTOMER: the emails and phones one customer may hold; 100
    by default."""
    return _whole_number("MAX_VALUES_PER_CUSTOMER", "100")


def max_partners_per_value() -> int:
    """MAX_PARTNERS_PER_VALUE: the values of the other kind one value may be
    seen with, in rows or in merge events; 20 by default."""
    return _whole_number("MAX_PARTNERS_PER_VALUE", "20")


def erasure_key() -> bytes | None:
    """ERASURE_KEY: the secret that suppressed values are hashed with; None
    when unset or empty (nothing can be suppressed)."""
    key = os.environ.get("ERASURE_KEY", "")
    if not key:
        return None
    if len(key) < MIN_ERASURE_KEY:
        raise ConfigurationError(
            f"ERASURE_KEY must be at least {MIN_ERASURE_KEY} characters: a short"
            " key lets anyone who reads the database guess the suppressed values."
        )
    return key.encode()


def port_set() -> bool:
    """Whether PORT is set: a platform started the service (the Procfile)."""
    return bool(os.environ.get("PORT"))


# The shortest WEBHOOK_SECRET_KEY taken: 32 characters of a random text.
MIN_WEBHOOK_SECRET_KEY = 32


def webhook_secret_key() -> str | None:
    """WEBHOOK_SECRET_KEY: the key the webhook endpoints' signing secrets are
    encrypted with at rest (webhooks.py); None when it is unset. Without it
    no endpoint can be registered and the delivery worker does not start."""
    value = os.environ.get("WEBHOOK_SECRET_KEY")
    if value is None:
        return None
    if len(value.strip()) < MIN_WEBHOOK_SECRET_KEY:
        raise ConfigurationError(
            f"WEBHOOK_SECRET_KEY must be a random text of at least"
            f" {MIN_WEBHOOK_SECRET_KEY} characters (for example the output of"
            " `openssl rand -base64 32`), or unset to serve without webhooks."
        )
    return value.strip()


def webhook_allow_private() -> bool:
    """WEBHOOK_ALLOW_PRIVATE: `true` lets webhooks reach private, loopback and
    link-local addresses (a receiver on the same network); `false`, the
    default, refuses them."""
    value = os.environ.get("WEBHOOK_ALLOW_PRIVATE", "false").strip().lower()
    if value not in ("true", "false"):
        raise ConfigurationError(
            f"WEBHOOK_ALLOW_PRIVATE must be true or false (the default), not {value!r}."
        )
    return value == "true"


def webhook_retry_base() -> float:
    """WEBHOOK_RETRY_BASE_SECONDS: the first retry's delay, 10 by default;
    every later delay is a fixed multiple of it (delivery.RETRY_STEPS)."""
    return _seconds("WEBHOOK_RETRY_BASE_SECONDS", "10")


def webhook_poll_seconds() -> float:
    """WEBHOOK_POLL_SECONDS: how often the delivery worker looks for new
    events and due retries, 0.1 by default."""
    return _seconds("WEBHOOK_POLL_SECONDS", "0.1")


def webhook_concurrency() -> int:
    """WEBHOOK_CONCURRENCY: endpoints a delivery worker serves at once, each
    on a thread of its own; 8 by default."""
    return _whole_number("WEBHOOK_CONCURRENCY", "8")


def _seconds(name: str, default: str) -> float:
    value = os.environ.get(name, default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise ConfigurationError(
            f"{name} must be a number of seconds above 0 and below 86400 (the"
            f" default is {default}), not {value!r}."
        )
    return seconds
