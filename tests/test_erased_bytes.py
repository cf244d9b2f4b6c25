"""An erased value leaves the database's files, not only its rows."""

import sqlite3
from pathlib import Path

from sqlalchemy import create_engine

from models import prepare_engine


def test_every_sqlite_connection_zeroes_freed_space_whatever_the_build_default(
    tmp_path: Path,
) -> None:
    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "contacts.db")
        connection.execute("PRAGMA secure_delete = OFF")
        return connection

    engine = create_engine("sqlite://", creator=connect)
    prepare_engine(engine, synchronous="FULL")

    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    engine.dispose()
