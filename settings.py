"""Settings that the service refuses to start without understanding, read from
the environment here and nowhere else (README: "Configuration"). A value it
cannot use stops `create_app()` and gunicorn with a message that says what to
change, rather than running with something the operator did not ask for."""

import os

SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


class ConfigurationError(ValueError):
    """A setting holds a value the service will not run with."""


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
