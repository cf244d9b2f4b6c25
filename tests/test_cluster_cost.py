"""The cost of a request grows with the rows of the clusters it touches, not
with their square: one phone shared by every row of a large cluster once built
n x n rows in the cluster read (a join on the link from every row that holds
the phone). The work is counted, not timed: SQLite's virtual machine
instructions (a progress handler called on each one), PostgreSQL's rows
produced by every node of EXPLAIN ANALYZE."""

from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import Connection, insert, select

import reads
from costs import PHONE, instructions, seed_cluster
from models import Contact, Event, db


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
    counted, rows = instructions(
        connection,
        lambda: reads.read_clusters(connection, email=None, phone_number=PHONE),
    )
    assert rows
    return counted


def postgresql_rows(connection: Connection) -> int:
    query = reads._CLUSTER_QUERIES[False, True].compile(dialect=connection.dialect)
    (explained,) = connection.exec_driver_sql(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {query}",
        {"email": None, "phone_number": PHONE},
    ).scalar_one()
    return sum_rows(explained["Plan"])


def test_reading_a_cluster_costs_in_proportion_to_its_rows(app: Flask) -> None:
    """Doubling a cluster that shares one phone (400 to 800 rows) must about
    double the work of reading it; n x n rows would quadruple it."""
    small = cluster_read_work(app, 400)
    large = cluster_read_work(app, 800)
    assert large < 2.5 * small, f"400 rows: {small}, 800 rows: {large}"


def seed_history(connection: Connection, size: int) -> int:
    """A customer of `size` rows, each with the event that added it; its id."""
    seed_cluster(connection, size)
    rows = connection.execute(select(Contact.id).order_by(Contact.id)).scalars().all()
    now = datetime.now(UTC)
    connection.execute(
        insert(Event),
        [
            {
                "type": "customer.contact_added",
                "at": now,
                "customer_id": rows[0],
                "contact_ids": [row],
                "email": f"row{n}@shop.com",
                "phone_number": PHONE,
            }
            for n, row in enumerate(rows)
        ],
    )
    return rows[0]


def history_work(app: Flask, size: int) -> int:
    """The work of reading the first page of a `size`-row customer's history."""
    with app.app_context(), db.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM event")
        connection.exec_driver_sql("DELETE FROM contact")
        customer = seed_history(connection, size)
    with app.app_context(), db.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("ANALYZE contact")
            connection.exec_driver_sql("ANALYZE event")
            plan = explain_history(connection, customer)
            assert "JIT" not in plan, "the history was compiled by JIT"
            return sum_rows(plan["Plan"])
        counted, page = instructions(
            connection,
            lambda: reads.history(connection, customer, after=0, limit=100),
        )
        assert page is not None and len(page.events) == 100
        return counted


def explain_history(connection: Connection, customer: int) -> Any:
    query = reads._HISTORY["postgresql", False].compile(dialect=connection.dialect)
    (explained,) = connection.exec_driver_sql(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {query}",
        {"contact_id": customer, "after": 0, "limit": 101},
    ).scalar_one()
    return explained


def sum_rows(node: dict[str, Any]) -> int:
    own = int(node["Actual Rows"] * node["Actual Loops"])
    return own + sum(sum_rows(child) for child in node.get("Plans", []))


def test_a_customers_history_costs_in_proportion_to_its_rows(app: Flask) -> None:
    """Each event of the history is checked against the rows it names (one
    look-up each), so doubling the customer about doubles the work; and on
    PostgreSQL the plan, estimated at 100 ids an event, is not JIT-compiled
    (a second spent compiling a 20 ms query)."""
    small = history_work(app, 400)
    large = history_work(app, 800)
    assert large < 2.5 * small, f"400 rows: {small}, 800 rows: {large}"


def merge_partners_work(app: Flask, merges: int) -> int:
    """The work of reading the merge partners of a value pair that no merge
    holds, beside `merges` merge events of other values (their statistics not
    yet gathered, as after a day of merges)."""
    now = datetime.now(UTC)

    def events(kind: str, count: int) -> list[dict[str, Any]]:
        return [
            {
                "type": kind,
                "at": now,
                "customer_id": n,
                "contact_ids": [n],
                "email": f"{kind}{n}@shop.com",
                "phone_number": str(5_550_000 + n),
            }
            for n in range(count)
        ]

    with app.app_context(), db.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM event")
        connection.execute(insert(Event), events("customer.created", 5000))
        connection.exec_driver_sql("ANALYZE event")
        connection.execute(insert(Event), events("customer.merged", merges))
    parameters = {"email": "nobody@shop.com", "phone_number": "5559999"}
    with app.app_context(), db.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            query = reads._MERGE_PARTNERS.compile(dialect=connection.dialect)
            (explained,) = connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", parameters
            ).scalar_one()
            return rows_examined(explained["Plan"])
        counted, _ = instructions(
            connection, lambda: reads.read_partners(connection, **parameters)
        )
        return counted


def rows_examined(plan: dict[str, Any]) -> int:
    """Rows every node of a plan produced or read and dropped by its filter."""
    own = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
    return own + sum(rows_examined(child) for child in plan.get("Plans", []))


def test_reading_merge_partners_costs_nothing_of_other_values_merges(
    app: Flask,
) -> None:
    """Every write with an email and a phone reads their merge partners. The
    read must go to its values' index entries: a plan that scanned one merge
    index for the other value read every merge event (7 ms at 16,000 merges
    on PostgreSQL)."""
    few = merge_partners_work(app, 500)
    many = merge_partners_work(app, 4000)
    assert many < 1.5 * few + 50, f"500 merges: {few}, 4000 merges: {many}"
