"""The references: the single cheapest database operation that a lookup or a
write must do, in a plain Flask endpoint through Flask-SQLAlchemy with its
default settings (on SQLite: WAL, the service's synchronous, FULL unless
SQLITE_SYNCHRONOUS says NORMAL, and Python's default busy timeout), without
validation, logging or metrics.

POST /select runs one indexed SELECT by the body's email; POST /insert inserts
one row with the body's email and phone and commits. The same wrk scripts
drive them (bench/identify.lua, with the path in the URL), so that BENCHMARKS.md
can set the service beside the cheapest possible endpoint on the machine
measured; bench/references.py serves them.
"""

import os
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from sqlalchemy import event, select

from models import Contact, db
from settings import sqlite_synchronous

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"].replace(
    "postgresql://", "postgresql+psycopg://", 1
)
db.init_app(app)
# The service's setting, so that both pay the same for a commit.
SYNCHRONOUS = sqlite_synchronous()


def wal(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA journal_mode = WAL")
    dbapi_connection.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")


with app.app_context():
    if db.engine.dialect.name == "sqlite":
        event.listen(db.engine, "connect", wal)


@app.post("/select")
def select_one() -> dict[str, Any]:
    email = request.get_json()["email"]
    found = db.session.scalars(select(Contact).where(Contact.email == email)).first()
    return {"contact": {"id": found.id if found else None}}


@app.post("/insert")
def insert_one() -> dict[str, Any]:
    body = request.get_json()
    now = datetime.now(UTC)
    contact = Contact(
        email=body["email"],
        phone_number=body["phoneNumber"],
        link_precedence="primary",
        created_at=now,
        updated_at=now,
    )
    db.session.add(contact)
    db.session.commit()
    return {"contact": {"id": contact.id}}
