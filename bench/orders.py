"""A shop's order history as a CSV file, for the import series: customers
with 1 to 5 orders each, createdAt spread over four years in no order, and
about one customer in five giving, at one of its orders, the phone of an
earlier customer (a household, a shared phone): joined later."""

import csv
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

START = datetime(2021, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=4 * 365)


def write_orders(path: Path, lines: int, seed: int = 1) -> None:
    """Write `lines` order lines (orderId, email, phoneNumber, createdAt,
    total) to `path`."""
    chooser = random.Random(seed)
    span = int(SPAN.total_seconds())
    written = customer = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["orderId", "email", "phoneNumber", "createdAt", "total"])
        while written < lines:
            customer += 1
            email = f"customer{customer}@shop{customer % 97}.example.com"
            phone = f"+44 7{customer:09d}"
            shared = None
            if customer > 100 and chooser.random() < 0.2:
                shared = f"+44 7{chooser.randrange(1, customer):09d}"
            for order in range(chooser.randint(1, 5)):
                if written == lines:
                    break
                at = START + timedelta(seconds=chooser.randrange(span))
                number = shared if shared is not None and order == 1 else phone
                writer.writerow(
                    [
                        written + 1,
                        email,
                        number,
                        at.isoformat().replace("+00:00", "Z"),
                        f"{chooser.randint(5, 500)}.00",
                    ]
                )
                written += 1


def write_bodies(orders: Path, bodies: Path) -> None:
    """Write the /identify body of each line of `orders` to `bodies`, one
    JSON object a line, in the order the import applies the lines: by
    createdAt, file order breaking ties (write_orders gives every createdAt
    the same width and offset, so their text sorts as their time)."""
    with orders.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        email, phone, created = (
            header.index(name) for name in ("email", "phoneNumber", "createdAt")
        )
        rows = sorted(
            (row[created], number, row[email], row[phone])
            for number, row in enumerate(reader)
        )
    with bodies.open("w", encoding="utf-8") as out:
        for _, _, address, phone_number in rows:
            out.write(
                json.dumps({"email": address, "phoneNumber": phone_number}) + "\n"
            )


if __name__ == "__main__":
    write_orders(Path(sys.argv[1]), int(sys.argv[2]))
