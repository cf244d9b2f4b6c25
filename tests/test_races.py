"""A lost race, forced deterministically: another transaction commits the same
brand-new contact between this request's read and its write."""

from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from models import Contact, db
from reconcile import Outcome, reconcile_and_commit


def test_a_request_that_loses_a_race_is_retried_and_answered(app: Any) -> None:
    with app.app_context():
        engine = db.engine
        competitor: dict[str, Any] = {}

        def commit_the_same_contact_first(conn, cursor, statement, *_: Any) -> None:  # noqa: ANN001
            if competitor or not statement.startswith("WITH"):
                return
            competitor["started"] = True
            with Session(engine) as other:
                competitor["identity"], _ = reconcile_and_commit(
                    other, email="doc@fluxkart.com", phone_number="123456"
                )

        event.listen(engine, "after_cursor_execute", commit_the_same_contact_first)
        try:
            identity, retries = reconcile_and_commit(
                db.session(), email="doc@fluxkart.com", phone_number="123456"
            )
        finally:
            event.remove(engine, "after_cursor_execute", commit_the_same_contact_first)

        assert retries == 1
        assert competitor["identity"].outcome is Outcome.CREATED
        assert identity.outcome is Outcome.UNCHANGED
        assert identity.primary_id == competitor["identity"].primary_id
        assert db.session.scalar(select(func.count()).select_from(Contact)) == 1
