"""Whether the database's schema serves this code (docs/operating.md: "Upgrades
and rollbacks"). It does at this code's latest migration, and also ahead of it:
a release's migrations run before its code takes traffic, so a rollback
meets a schema one release newer. Migrations add first and remove a release
later, so a newer schema still holds every table and column this code uses;
that is checked, not assumed, once per schema revision."""

from functools import cache
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.exc import NoSuchTableError

from models import db

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Revisions newer than this code's, found to hold all it uses.
_served_ahead: set[frozenset[str]] = set()


@cache
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """This code's latest revisions, and all it knows."""
    script = ScriptDirectory(str(MIGRATIONS))
    known = frozenset(revision.revision for revision in script.walk_revisions())
    return frozenset(script.get_heads()), known


def problem(connection: Connection) -> str | None:
    """What keeps the database from serving this code, for a person to act
    on; None when it serves."""
    current = frozenset(MigrationContext.configure(connection).get_current_heads())
    latest, known = _revisions()
    if current == latest or current in _served_ahead:
        return None
    if not current or current & known:
        return (
            f"The database schema is at revision {sorted(current) or 'none'},"
            f" not {sorted(latest)}: run `flask --app app db upgrade`."
        )
    missing = _missing(connection)
    if missing:
        return (
            f"The database schema is at revision {sorted(current)}, newer than"
            f" this code's {sorted(latest)}, and lacks what this code uses:"
            f" {', '.join(missing)}. Deploy the release that migrated it."
        )
    _served_ahead.add(current)
    return None


def _missing(connection: Connection) -> list[str]:
    """The tables and columns of the models that the database lacks."""
    inspector = inspect(connection)
    missing = []
    for table in db.metadata.sorted_tables:
        try:
            columns = {column["name"] for column in inspector.get_columns(table.name)}
        except NoSuchTableError:
            missing.append(table.name)
            continue
        missing += [
            f"{table.name}.{c.name}" for c in table.columns if c.name not in columns
        ]
    return missing
