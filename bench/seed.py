"""Fill an empty, migrated database with N contacts in realistic clusters.

Usage: DATABASE_URL=... python bench/seed.py N [LARGE ROWS]

The schema comes from the real migrations (`flask --app app db upgrade`), run
here after dropping whatever the database held: the contacts are loaded at
revision 0001, then the ledger's migration writes one event per contact. Rows
are bulk-loaded, never sent through the API: executemany in one transaction
on SQLite, COPY on PostgreSQL.

The data is a pure function of the row count, so the wrk scripts compute
identifiers instead of reading them (see bench/identify.lua, which must agree):

- cluster k holds 1 + k % 5 rows (the last cluster may be cut short);
- its row j has email "c{k}e{(j + 1) // 2}@seed.example.com" and phone
  str(PHONE_BASE + 3 * k + j // 2), so consecutive rows share one identifier;
- row 0 is the primary; the others are secondaries linked to it;
- ids ascend through the clusters, and created_at ascends with the id.

With LARGE and ROWS, LARGE customers of ROWS rows each follow the N rows
(bench/run.py's detach series): customer i's row j has email
"b{i}e{j}@large.example.com" and phone str(LARGE_PHONE_BASE + i), the phone
every row of that customer shares; row 0 is the primary.

Prints one JSON line: rows, clusters, full_clusters, large_primary_ids and
seconds.
"""

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.sql import SQL, Identifier

ROOT = Path(__file__).resolve().parent.parent
# Contacts are loaded into the schema as it was before the ledger; the
# ledger's migration then writes their events, as it does for a shop's data.
CONTACTS_ONLY = "0001"
PHONE_BASE = 10_000_000_000
EMAIL_DOMAIN = "seed.example.com"
LARGE_PHONE_BASE = 18_000_000_000
LARGE_DOMAIN = "large.example.com"
STEP = timedelta(milliseconds=10)
# The exact text SQLAlchemy's DateTime writes to SQLite (UTC, no zone).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"

Row = tuple[int, str, str, int | None, str, datetime]


def cluster_size(k: int) -> int:
    return 1 + k % 5


def rows(count: int, large: int = 0, large_rows: int = 0) -> Iterator[Row]:
    """The seeded rows: (id, phone_number, email, linked_id, precedence, created_at)."""
    # Every seeded row is older than anything the service will insert.
    start = datetime.now(UTC) - STEP * (count + large * large_rows) - timedelta(days=1)
    row_id = 0
    k = 0
    while row_id < count:
        primary_id = row_id + 1
        for j in range(min(cluster_size(k), count - row_id)):
            row_id += 1
            yield (
                row_id,
                str(PHONE_BASE + 3 * k + j // 2),
                f"c{k}e{(j + 1) // 2}@{EMAIL_DOMAIN}",
                None if j == 0 else primary_id,
                "primary" if j == 0 else "secondary",
                start + STEP * row_id,
            )
        k += 1
    for i in range(large):
        primary_id = row_id + 1
        for j in range(large_rows):
            row_id += 1
            yield (
                row_id,
                str(LARGE_PHONE_BASE + i),
                f"b{i}e{j}@{LARGE_DOMAIN}",
                None if j == 0 else primary_id,
                "primary" if j == 0 else "secondary",
                start + STEP * row_id,
            )


def clusters(count: int) -> tuple[int, int]:
    """(all clusters, clusters that got every row of their size)."""
    cycles, rest = divmod(count, 15)
    full = cycles * 5
    k = full
    while rest >= cluster_size(k):
        rest -= cluster_size(k)
        full += 1
        k += 1
    return full + (1 if rest else 0), full


def migrate(url: str, revision: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    flask = str(Path(sys.executable).parent / "flask")
    subprocess.run(
        [flask, "--app", "app", "db", "upgrade", revision],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def seed_sqlite(path: str, seeded: Iterator[Row]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    migrate(f"sqlite:///{path}", CONTACTS_ONLY)
    connection = sqlite3.connect(path, isolation_level=None)
    # The load is redone from scratch if it fails, so durability can wait.
    connection.execute("PRAGMA synchronous = OFF")
    indexes = [
        sql
        for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name = 'contact'"
        )
    ]
    connection.execute("BEGIN")
    # Indexes are built once at the end, from the migration's own statements.
    for sql in indexes:
        name = sql.split()[2]
        connection.execute(f"DROP INDEX {name}")
    connection.executemany(
        "INSERT INTO contact (id, phone_number, email, linked_id, link_precedence,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (*row[:5], text, text)
            for row in seeded
            for text in (row[5].strftime(SQLITE_DATETIME),)
        ),
    )
    for sql in indexes:
        connection.execute(sql)
    connection.execute("COMMIT")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


def create_database(url: str) -> None:
    """Create the database named by `url` unless the server already has it."""
    name = str(conninfo_to_dict(url)["dbname"])
    server = make_conninfo(url, dbname="postgres")
    with psycopg.connect(server, autocommit=True) as connection:
        if not connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone():
            connection.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))


def seed_postgresql(url: str, seeded: Iterator[Row]) -> None:
    create_database(url)
    with psycopg.connect(url, autocommit=True) as connection:
        # Every table the migrations made, whichever revision made them.
        tables = [
            Identifier(name)
            for (name,) in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        if tables:
            connection.execute(
                SQL("DROP TABLE {} CASCADE").format(SQL(", ").join(tables))
            )
    migrate(url, CONTACTS_ONLY)
    with psycopg.connect(url) as connection:
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'contact'"
            " AND indexname LIKE 'ix_%'"
        ).fetchall()
        for name, _ in indexes:
            connection.execute(f"DROP INDEX {name}")
        # Every row is valid by construction; skip the per-row foreign-key check.
        connection.execute("SET LOCAL session_replication_role = replica")
        with connection.cursor().copy(
            "COPY contact (id, phone_number, email, linked_id, link_precedence,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            for row in seeded:
                copy.write_row((*row, row[5]))
        for _, definition in indexes:
            connection.execute(definition)
        connection.execute(
            "SELECT setval(pg_get_serial_sequence('contact', 'id'),"
            " (SELECT coalesce(max(id), 0) + 1 FROM contact), false)"
        )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE contact")


def main() -> None:
    count = int(sys.argv[1])
    large, large_rows = map(int, sys.argv[2:4]) if len(sys.argv) > 2 else (0, 0)
    url = os.environ["DATABASE_URL"]
    started = time.perf_counter()
    seeded = rows(count, large, large_rows)
    if url.startswith("sqlite:///"):
        seed_sqlite(url.removeprefix("sqlite:///"), seeded)
    else:
        url = url.replace("postgres://", "postgresql://", 1)
        seed_postgresql(url, seeded)
    migrate(url, "head")
    total, full = clusters(count)
    print(
        json.dumps(
            {
                "rows": count + large * large_rows,
                "clusters": total,
                "full_clusters": full,
                "large_primary_ids": [count + 1 + i * large_rows for i in range(large)],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
