"""reconcile() against a real database: every rule of SPEC.md."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from invariants import assert_invariants, live_rows
from models import Contact
from reconcile import Identity, Outcome, reconcile


def identify(
    session: Session, email: str | None = None, phone: str | None = None
) -> Identity:
    identity = reconcile(session, email=email, phone_number=phone)
    session.commit()
    return identity


def view(identity: Identity) -> tuple[int, list[str], list[str], list[int]]:
    return (
        identity.primary_id,
        identity.emails,
        identity.phone_numbers,
        identity.secondary_ids,
    )


def row_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Contact)) or 0


def contact(session: Session, contact_id: int) -> Contact:
    found = session.get(Contact, contact_id, populate_existing=True)
    assert found is not None
    return found


def test_unknown_email_and_phone_create_a_primary(session: Session) -> None:
    identity = identify(session, "doc@fluxkart.com", "123456")

    assert view(identity) == (1, ["doc@fluxkart.com"], ["123456"], [])
    assert identity.outcome is Outcome.CREATED
    row = contact(session, 1)
    assert (row.link_precedence, row.linked_id) == ("primary", None)


@pytest.mark.parametrize(
    ("email", "phone"), [("doc@fluxkart.com", None), (None, "123456")]
)
def test_a_single_unknown_value_creates_a_primary_with_the_other_null(
    session: Session, email: str | None, phone: str | None
) -> None:
    identity = identify(session, email, phone)

    row = contact(session, identity.primary_id)
    assert (row.email, row.phone_number) == (email, phone)


def test_known_phone_with_new_email_adds_a_secondary_linked_to_the_primary(
    session: Session,
) -> None:
    identify(session, "lorraine@hillvalley.edu", "123456")

    identity = identify(session, "mcfly@hillvalley.edu", "123456")

    assert view(identity) == (
        1,
        ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
        ["123456"],
        [2],
    )
    assert identity.outcome is Outcome.LINKED
    row = contact(session, 2)
    assert (row.email, row.phone_number) == ("mcfly@hillvalley.edu", "123456")
    assert (row.link_precedence, row.linked_id) == ("secondary", 1)


def test_known_email_with_new_phone_adds_a_secondary(session: Session) -> None:
    identify(session, "doc@fluxkart.com", "123456")

    identity = identify(session, "doc@fluxkart.com", "654321")

    assert view(identity) == (1, ["doc@fluxkart.com"], ["123456", "654321"], [2])


@pytest.mark.parametrize(
    ("email", "phone"),
    [
        ("doc@fluxkart.com", None),
        (None, "123456"),
        ("doc@fluxkart.com", "123456"),
        ("emmett@hillvalley.edu", "123456"),
        ("doc@fluxkart.com", "999999"),
    ],
)
def test_request_bringing_nothing_new_inserts_nothing(
    session: Session, email: str | None, phone: str | None
) -> None:
    identify(session, "doc@fluxkart.com", "123456")
    identify(session, "emmett@hillvalley.edu", "999999")
    identify(session, "emmett@hillvalley.edu", "123456")
    before = row_count(session)

    identity = identify(session, email, phone)

    assert row_count(session) == before
    assert identity.outcome is Outcome.UNCHANGED


def test_worked_example_of_the_spec_row_by_row(session: Session) -> None:
    steps = [
        (("lorraine@hillvalley.edu", "123456"), (1, ["lorraine"], ["123456"], [])),
        (
            ("mcfly@hillvalley.edu", "123456"),
            (1, ["lorraine", "mcfly"], ["123456"], [2]),
        ),
        ((None, "123456"), (1, ["lorraine", "mcfly"], ["123456"], [2])),
        (("george@hillvalley.edu", "919191"), (3, ["george"], ["919191"], [])),
        (("biffsucks@hillvalley.edu", "717171"), (4, ["biffsucks"], ["717171"], [])),
        (
            ("george@hillvalley.edu", "717171"),
            (3, ["george", "biffsucks"], ["919191", "717171"], [4]),
        ),
    ]
    for (email, phone), (primary, names, phones, secondaries) in steps:
        emails = [f"{name}@hillvalley.edu" for name in names]
        assert view(identify(session, email, phone)) == (
            primary,
            emails,
            phones,
            secondaries,
        )
    assert row_count(session) == 4
    assert_invariants(live_rows(session))


def test_merge_keeps_the_older_primary_and_demotes_the_newer(
    session: Session,
) -> None:
    identify(session, "george@hillvalley.edu", "919191")
    identify(session, "biffsucks@hillvalley.edu", "717171")
    created = contact(session, 2).updated_at

    identity = identify(session, "george@hillvalley.edu", "717171")

    assert identity.outcome is Outcome.MERGED
    demoted = contact(session, 2)
    assert (demoted.link_precedence, demoted.linked_id) == ("secondary", 1)
    assert demoted.updated_at > created
    assert row_count(session) == 2


def test_merge_in_the_other_direction_still_keeps_the_older_primary(
    session: Session,
) -> None:
    identify(session, "george@hillvalley.edu", "919191")
    identify(session, "biffsucks@hillvalley.edu", "717171")

    identity = identify(session, "biffsucks@hillvalley.edu", "919191")

    assert view(identity) == (
        1,
        ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
        ["919191", "717171"],
        [2],
    )


def test_merge_repoints_every_secondary_of_the_newer_primary(
    session: Session,
) -> None:
    identify(session, "a@shop.com", "1111")
    identify(session, "b@shop.com", "2222")
    identify(session, "b2@shop.com", "2222")
    identify(session, "b@shop.com", "2233")

    identity = identify(session, "a@shop.com", "2233")

    assert view(identity) == (
        1,
        ["a@shop.com", "b@shop.com", "b2@shop.com"],
        ["1111", "2222", "2233"],
        [2, 3, 4],
    )
    assert [contact(session, i).linked_id for i in (2, 3, 4)] == [1, 1, 1]
    assert_invariants(live_rows(session))


def test_merge_reached_through_secondaries_on_both_sides(session: Session) -> None:
    identify(session, "a@shop.com", "1111")
    identify(session, "a2@shop.com", "1111")
    identify(session, "b@shop.com", "2222")
    identify(session, "b2@shop.com", "2222")

    identity = identify(session, "a2@shop.com", "2222")

    assert identity.primary_id == 1
    assert identity.secondary_ids == [2, 3, 4]
    assert identity.outcome is Outcome.MERGED
    assert row_count(session) == 4
    assert_invariants(live_rows(session))


@pytest.mark.parametrize("oldest_first", [True, False])
def test_three_clusters_merge_into_the_oldest_by_successive_requests(
    session: Session, oldest_first: bool
) -> None:
    for n in (1, 2, 3):
        identify(session, f"c{n}@shop.com", f"{n}{n}{n}{n}")
    bridges = [("c1@shop.com", "2222"), ("c2@shop.com", "3333")]
    if not oldest_first:
        bridges = [("c3@shop.com", "2222"), ("c2@shop.com", "1111")]

    for email, phone in bridges:
        identity = identify(session, email, phone)

    assert identity.primary_id == 1
    assert identity.secondary_ids == [2, 3]
    assert identity.emails == ["c1@shop.com", "c2@shop.com", "c3@shop.com"]
    assert_invariants(live_rows(session))


def test_soft_deleted_rows_are_ignored(session: Session) -> None:
    identify(session, "doc@fluxkart.com", "123456")
    session.execute(update(Contact).values(deleted_at=datetime.now(UTC)))
    session.commit()

    identity = identify(session, "doc@fluxkart.com", "123456")

    assert view(identity) == (2, ["doc@fluxkart.com"], ["123456"], [])
    assert identity.outcome is Outcome.CREATED


def test_a_soft_deleted_primary_hands_over_to_the_oldest_live_row(
    session: Session,
) -> None:
    identify(session, "a@shop.com", "1111")
    identify(session, "b@shop.com", "1111")
    identify(session, "c@shop.com", "1111")
    session.execute(
        update(Contact).where(Contact.id == 1).values(deleted_at=datetime.now(UTC))
    )
    session.commit()

    identity = identify(session, None, "1111")

    assert view(identity) == (2, ["b@shop.com", "c@shop.com"], ["1111"], [3])
    promoted = contact(session, 2)
    assert (promoted.link_precedence, promoted.linked_id) == ("primary", None)
    assert contact(session, 3).linked_id == 2
    assert_invariants(live_rows(session))


def test_primary_values_come_first_then_others_in_creation_order(
    session: Session,
) -> None:
    identify(session, None, "5555")
    identify(session, "z@shop.com", "5555")
    identify(session, "a@shop.com", "5555")
    identify(session, "a@shop.com", "1234")

    identity = identify(session, None, "5555")

    assert identity.emails == ["z@shop.com", "a@shop.com"]
    assert identity.phone_numbers == ["5555", "1234"]
    assert identity.secondary_ids == [2, 3, 4]


def test_each_value_is_listed_once(session: Session) -> None:
    identify(session, "a@shop.com", "1111")
    identify(session, "a@shop.com", "2222")
    identify(session, "b@shop.com", "2222")

    identity = identify(session, "b@shop.com", None)

    assert identity.emails == ["a@shop.com", "b@shop.com"]
    assert identity.phone_numbers == ["1111", "2222"]


def test_the_same_request_twice_gets_the_same_answer_and_inserts_once(
    session: Session,
) -> None:
    identify(session, "doc@fluxkart.com", "123456")
    first = identify(session, "emmett@hillvalley.edu", "123456")

    second = identify(session, "emmett@hillvalley.edu", "123456")

    assert view(second) == view(first)
    assert row_count(session) == 2


def test_email_only_request_does_not_match_rows_without_a_phone(
    session: Session,
) -> None:
    identify(session, "a@shop.com", None)

    identity = identify(session, "b@shop.com", None)

    assert view(identity) == (2, ["b@shop.com"], [], [])


def test_phone_only_request_does_not_match_rows_without_an_email(
    session: Session,
) -> None:
    identify(session, None, "1111")

    identity = identify(session, None, "2222")

    assert view(identity) == (2, [], ["2222"], [])


def test_reconcile_without_email_or_phone_raises(session: Session) -> None:
    with pytest.raises(ValueError, match="email"):
        reconcile(session, email=None, phone_number=None)


def test_a_new_secondary_is_never_older_than_its_primary(session: Session) -> None:
    identify(session, "a@shop.com", "1111")
    future = datetime.now(UTC) + timedelta(hours=1)
    session.execute(update(Contact).values(created_at=future))
    session.commit()

    identify(session, "b@shop.com", "1111")

    assert contact(session, 2).created_at >= contact(session, 1).created_at
    assert_invariants(live_rows(session))


def test_cluster_lookup_reads_indexes_not_the_whole_table(session: Session) -> None:
    engine = session.get_bind()
    if engine.dialect.name != "sqlite":
        pytest.skip("asserted on SQLite, whose plan does not depend on table size")
    queries: list[tuple[str, tuple[object, ...]]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        queries.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        reconcile(session, email="a@shop.com", phone_number="1111")
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    session.rollback()
    statement, parameters = next(q for q in queries if q[0].startswith("WITH"))
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statement}", parameters
        ).all()
    details = " | ".join(row[-1] for row in plan)
    assert "SCAN contact" not in details, details
    assert "USING INDEX ix_contact_email" in details, details
    assert "USING INDEX ix_contact_phone_number" in details, details
    assert "USING INDEX ix_contact_linked_id" in details, details
