"""The rules applied to a real database (writes.py over reconcile.py): every
rule of the contract."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Row, func, select, update

import reads
import writes
from engines import only_on
from invariants import assert_invariants, live_rows
from models import Contact
from reconcile import Identity, Outcome, decide

pytestmark = pytest.mark.quick


def identify(
    connection: Connection, email: str | None = None, phone: str | None = None
) -> Identity:
    served = writes.identify(
        connection, email=email, phone_number=phone, request_id=None
    )
    return served.identity


def view(identity: Identity) -> tuple[int, list[str], list[str], list[int]]:
    return (
        identity.primary_id,
        identity.emails,
        identity.phone_numbers,
        identity.secondary_ids,
    )


def row_count(connection: Connection) -> int:
    return connection.scalar(select(func.count()).select_from(Contact)) or 0


def contact(connection: Connection, contact_id: int) -> Row[Any]:
    return connection.execute(
        select(Contact.__table__).where(Contact.id == contact_id)
    ).one()


def test_unknown_email_and_phone_create_a_primary(connection: Connection) -> None:
    identity = identify(connection, "doc@fluxkart.com", "123456")

    assert view(identity) == (1, ["doc@fluxkart.com"], ["123456"], [])
    assert identity.outcome is Outcome.CREATED
    row = contact(connection, 1)
    assert (row.link_precedence, row.linked_id) == ("primary", None)


@pytest.mark.parametrize(
    ("email", "phone"), [("doc@fluxkart.com", None), (None, "123456")]
)
def test_a_single_unknown_value_creates_a_primary_with_the_other_null(
    connection: Connection, email: str | None, phone: str | None
) -> None:
    identity = identify(connection, email, phone)

    row = contact(connection, identity.primary_id)
    assert (row.email, row.phone_number) == (email, phone)


def test_known_phone_with_new_email_adds_a_secondary_linked_to_the_primary(
    connection: Connection,
) -> None:
    identify(connection, "lorraine@hillvalley.edu", "123456")

    identity = identify(connection, "mcfly@hillvalley.edu", "123456")

    assert view(identity) == (
        1,
        ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
        ["123456"],
        [2],
    )
    assert identity.outcome is Outcome.LINKED
    row = contact(connection, 2)
    assert (row.email, row.phone_number) == ("mcfly@hillvalley.edu", "123456")
    assert (row.link_precedence, row.linked_id) == ("secondary", 1)


def test_known_email_with_new_phone_adds_a_secondary(connection: Connection) -> None:
    identify(connection, "doc@fluxkart.com", "123456")

    identity = identify(connection, "doc@fluxkart.com", "654321")

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
    connection: Connection, email: str | None, phone: str | None
) -> None:
    identify(connection, "doc@fluxkart.com", "123456")
    identify(connection, "emmett@hillvalley.edu", "999999")
    identify(connection, "emmett@hillvalley.edu", "123456")
    before = row_count(connection)

    identity = identify(connection, email, phone)

    assert row_count(connection) == before
    assert identity.outcome is Outcome.UNCHANGED


def test_worked_example_of_the_spec_row_by_row(connection: Connection) -> None:
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
        assert view(identify(connection, email, phone)) == (
            primary,
            emails,
            phones,
            secondaries,
        )
    assert row_count(connection) == 4
    assert_invariants(live_rows(connection))


def test_merge_keeps_the_older_primary_and_demotes_the_newer(
    connection: Connection,
) -> None:
    identify(connection, "george@hillvalley.edu", "919191")
    identify(connection, "biffsucks@hillvalley.edu", "717171")
    created = contact(connection, 2).updated_at

    identity = identify(connection, "george@hillvalley.edu", "717171")

    assert identity.outcome is Outcome.MERGED
    demoted = contact(connection, 2)
    assert (demoted.link_precedence, demoted.linked_id) == ("secondary", 1)
    assert demoted.updated_at > created
    assert row_count(connection) == 2


def test_merge_in_the_other_direction_still_keeps_the_older_primary(
    connection: Connection,
) -> None:
    identify(connection, "george@hillvalley.edu", "919191")
    identify(connection, "biffsucks@hillvalley.edu", "717171")

    identity = identify(connection, "biffsucks@hillvalley.edu", "919191")

    assert view(identity) == (
        1,
        ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
        ["919191", "717171"],
        [2],
    )


def test_merge_repoints_every_secondary_of_the_newer_primary(
    connection: Connection,
) -> None:
    identify(connection, "a@shop.com", "1111")
    identify(connection, "b@shop.com", "2222")
    identify(connection, "b2@shop.com", "2222")
    identify(connection, "b@shop.com", "2233")

    identity = identify(connection, "a@shop.com", "2233")

    assert view(identity) == (
        1,
        ["a@shop.com", "b@shop.com", "b2@shop.com"],
        ["1111", "2222", "2233"],
        [2, 3, 4],
    )
    assert [contact(connection, i).linked_id for i in (2, 3, 4)] == [1, 1, 1]
    assert_invariants(live_rows(connection))


def test_merge_reached_through_secondaries_on_both_sides(
    connection: Connection,
) -> None:
    identify(connection, "a@shop.com", "1111")
    identify(connection, "a2@shop.com", "1111")
    identify(connection, "b@shop.com", "2222")
    identify(connection, "b2@shop.com", "2222")

    identity = identify(connection, "a2@shop.com", "2222")

    assert identity.primary_id == 1
    assert identity.secondary_ids == [2, 3, 4]
    assert identity.outcome is Outcome.MERGED
    assert row_count(connection) == 4
    assert_invariants(live_rows(connection))


@pytest.mark.parametrize("oldest_first", [True, False])
def test_three_clusters_merge_into_the_oldest_by_successive_requests(
    connection: Connection, oldest_first: bool
) -> None:
    for n in (1, 2, 3):
        identify(connection, f"c{n}@shop.com", f"{n}{n}{n}{n}")
    bridges = [("c1@shop.com", "2222"), ("c2@shop.com", "3333")]
    if not oldest_first:
        bridges = [("c3@shop.com", "2222"), ("c2@shop.com", "1111")]

    for email, phone in bridges:
        identity = identify(connection, email, phone)

    assert identity.primary_id == 1
    assert identity.secondary_ids == [2, 3]
    assert identity.emails == ["c1@shop.com", "c2@shop.com", "c3@shop.com"]
    assert_invariants(live_rows(connection))


def test_soft_deleted_rows_are_ignored(connection: Connection) -> None:
    identify(connection, "doc@fluxkart.com", "123456")
    connection.execute(update(Contact).values(deleted_at=datetime.now(UTC)))
    connection.commit()

    identity = identify(connection, "doc@fluxkart.com", "123456")

    assert view(identity) == (2, ["doc@fluxkart.com"], ["123456"], [])
    assert identity.outcome is Outcome.CREATED


def test_a_soft_deleted_primary_hands_over_to_the_oldest_live_row(
    connection: Connection,
) -> None:
    identify(connection, "a@shop.com", "1111")
    identify(connection, "b@shop.com", "1111")
    identify(connection, "c@shop.com", "1111")
    connection.execute(
        update(Contact).where(Contact.id == 1).values(deleted_at=datetime.now(UTC))
    )
    connection.commit()

    identity = identify(connection, None, "1111")

    assert view(identity) == (2, ["b@shop.com", "c@shop.com"], ["1111"], [3])
    promoted = contact(connection, 2)
    assert (promoted.link_precedence, promoted.linked_id) == ("primary", None)
    assert contact(connection, 3).linked_id == 2
    assert_invariants(live_rows(connection))


def test_primary_values_come_first_then_others_in_creation_order(
    connection: Connection,
) -> None:
    identify(connection, None, "5555")
    identify(connection, "z@shop.com", "5555")
    identify(connection, "a@shop.com", "5555")
    identify(connection, "a@shop.com", "1234")

    identity = identify(connection, None, "5555")

    assert identity.emails == ["z@shop.com", "a@shop.com"]
    assert identity.phone_numbers == ["5555", "1234"]
    assert identity.secondary_ids == [2, 3, 4]


def test_each_value_is_listed_once(connection: Connection) -> None:
    identify(connection, "a@shop.com", "1111")
    identify(connection, "a@shop.com", "2222")
    identify(connection, "b@shop.com", "2222")

    identity = identify(connection, "b@shop.com", None)

    assert identity.emails == ["a@shop.com", "b@shop.com"]
    assert identity.phone_numbers == ["1111", "2222"]


def test_the_same_request_twice_gets_the_same_answer_and_inserts_once(
    connection: Connection,
) -> None:
    identify(connection, "doc@fluxkart.com", "123456")
    first = identify(connection, "emmett@hillvalley.edu", "123456")

    second = identify(connection, "emmett@hillvalley.edu", "123456")

    assert view(second) == view(first)
    assert row_count(connection) == 2


def test_email_only_request_does_not_match_rows_without_a_phone(
    connection: Connection,
) -> None:
    identify(connection, "a@shop.com", None)

    identity = identify(connection, "b@shop.com", None)

    assert view(identity) == (2, ["b@shop.com"], [], [])


def test_phone_only_request_does_not_match_rows_without_an_email(
    connection: Connection,
) -> None:
    identify(connection, None, "1111")

    identity = identify(connection, None, "2222")

    assert view(identity) == (2, [], ["2222"], [])


def test_deciding_without_email_or_phone_raises() -> None:
    with pytest.raises(ValueError, match="email"):
        decide([], email=None, phone_number=None, now=datetime.now(UTC))


def test_a_new_secondary_is_never_older_than_its_primary(
    connection: Connection,
) -> None:
    identify(connection, "a@shop.com", "1111")
    future = datetime.now(UTC) + timedelta(hours=1)
    connection.execute(update(Contact).values(created_at=future))
    connection.commit()

    identify(connection, "b@shop.com", "1111")

    assert contact(connection, 2).created_at >= contact(connection, 1).created_at
    assert_invariants(live_rows(connection))


@only_on("sqlite")
def test_cluster_lookup_reads_indexes_not_the_whole_table(
    connection: Connection,
) -> None:
    driver = connection.connection.driver_connection
    sent: list[str] = []
    driver.set_trace_callback(sent.append)
    try:
        reads.read_clusters(connection, email="a@shop.com", phone_number="1111")
    finally:
        driver.set_trace_callback(None)
    query = next(sql for sql in sent if sql.startswith("WITH"))
    plan = driver.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    details = " | ".join(row[-1] for row in plan)
    assert "SCAN contact" not in details, details
    assert "USING INDEX ix_contact_email" in details, details
    assert "USING INDEX ix_contact_phone_number" in details, details
    assert "USING INDEX ix_contact_linked_id" in details, details
