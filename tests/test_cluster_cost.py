"""The cost of a request grows with the rows of the clusters it touches, not
with their square: one phone shared by every row of a large cluster once built
n x n rows in the cluster read (a join on the link from every row that holds
the phone). The work is counted, not timed: SQLite's virtual machine
instructions (a progress handler called on each one), PostgreSQL's rows
produced by every node of EXPLAIN ANALYZE."""

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import Connection, insert

import locks
import store
from models import Contact, db

PHONE = "5550100"


def seed_cluster(connection: Connection, size: int) -> None:
    """One customer of `size` rows, every one holding PHONE, each its own email."""
    start = datetime.now(UTC) - timedelta(days=1)
    primary = connection.execute(
        insert(Contact)
        .values(
            email="row0@shop.com",
            phone_number=PHONE,
            link_precedence="primary",
            created_at=start,
            updated_at=start,
        )
        .returning(Contact.id)
    ).scalar_one()
    connection.execute(
        insert(Contact),
        [
            {
                "email": f"row{n}@shop.com",
                "phone_number": PHONE,
                "linked_id": primary,
                "link_precedence": "secondary",
                "created_at": start + timedelta(seconds=n),
                "updated_at": start + timedelta(seconds=n),
            }
            for n in range(1, size)
        ],
    )


def cluster_read_work(app: Flask, size: int) -> int:
    """The work of reading a cluster of `size` rows by the phone they share."""
    with app.app_context(), db.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM contact")
        seed_cluster(connection, size)
    with app.app_context(), db.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            return sqlite_instructions(connection)
        return postgresql_rows(connection)


def sqlite_instructions(connection: Connection) -> int:
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    driver = locks.driver(connection)
    driver.set_progress_handler(count, 1)
    try:
        rows = store.read_clusters(connection, email=None, phone_number=PHONE)
    finally:
        driver.set_progress_handler(None, 1)
    assert rows
    return counted[0]


def postgresql_rows(connection: Connection) -> int:
    query = store._CLUSTER_QUERIES[False, True].compile(dialect=connection.dialect)
    (explained,) = connection.exec_driver_sql(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {query}",
        {"email": None, "phone_number": PHONE},
    ).scalar_one()

    def rows(node: dict[str, Any]) -> int:
        own = int(node["Actual Rows"] * node["Actual Loops"])
        return own + sum(rows(child) for child in node.get("Plans", []))

    return rows(explained["Plan"])


def test_reading_a_cluster_costs_in_proportion_to_its_rows(app: Flask) -> None:
    """Doubling a cluster that shares one phone (400 to 800 rows) must about
    double the work of reading it; n x n rows would quadruple it."""
    small = cluster_read_work(app, 400)
    large = cluster_read_work(app, 800)
    assert large < 2.5 * small, f"400 rows: {small}, 800 rows: {large}"
