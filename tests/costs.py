"""Counting the work of a statement rather than timing it, and the large
cluster that the cost tests read: shared by the tests that pin a cost."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import Connection, insert

import locks
from models import Contact

PHONE = "5550100"
T = TypeVar("T")


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


def instructions(connection: Connection, work: Callable[[], T]) -> tuple[int, T]:
    """SQLite's virtual machine instructions that `work` runs, and its result."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    driver = locks.driver(connection)
    driver.set_progress_handler(count, 1)
    try:
        done = work()
    finally:
        driver.set_progress_handler(None, 1)
    return counted[0], done
