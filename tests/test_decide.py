"""The pure rules (reconcile.decide) without a database: thousands of random
request sequences, applied to an in-memory table, answer exactly as the
reference model and leave a ledger whose replay is the table."""

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invariants import assert_invariants, assert_ledger_explains
from reconcile import (
    NEW_ROW,
    Decision,
    EventType,
    Limits,
    Member,
    Outcome,
    decide,
    views,
)
from reference_model import (
    EMAILS,
    PHONES,
    START,
    LimitedModel,
    ReferenceModel,
    Table,
    examples,
)

pytestmark = pytest.mark.quick


def contact(decision: Decision, new_id: int | None) -> dict[str, object]:
    identity, _ = decision.settle(new_id)
    return {
        "primaryContactId": identity.primary_id,
        "primaryContatctId": identity.primary_id,
        "emails": identity.emails,
        "phoneNumbers": identity.phone_numbers,
        "secondaryContactIds": identity.secondary_ids,
    }


requests_strategy = st.lists(
    st.tuples(
        st.none() | st.sampled_from(EMAILS), st.none() | st.sampled_from(PHONES)
    ).filter(lambda pair: pair != (None, None)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=examples(3000), deadline=None)
@given(requests=requests_strategy)
def test_decisions_answer_like_the_reference_model_and_the_ledger_replays(
    requests: list[tuple[str | None, str | None]],
) -> None:
    table = Table()
    model = ReferenceModel()
    for email, phone in requests:
        before = table.next_id
        decision = table.identify(email, phone)
        new_id = before if table.next_id > before else None

        assert contact(decision, new_id) == model.identify(email, phone)
        assert decision.changes == bool(decision.events)
        rows = table.live()
        assert_invariants(rows)
        assert_ledger_explains(rows, table.events)


def test_a_request_that_changes_nothing_decides_no_event() -> None:
    table = Table()
    table.identify("doc@fluxkart.com", "123456")

    decision = table.identify("doc@fluxkart.com", None)

    assert decision.outcome is Outcome.UNCHANGED
    assert not decision.changes
    assert (decision.insert, decision.relink, decision.promote) == (None, (), None)


def test_a_merge_records_the_absorbed_customer_and_the_request_as_evidence() -> None:
    table = Table()
    table.identify("george@hillvalley.edu", "919191")
    table.identify("biffsucks@hillvalley.edu", "717171")
    table.identify("biff@hillvalley.edu", "717171")

    decision = table.identify("george@hillvalley.edu", "717171")

    (merged,) = decision.events
    assert merged.type is EventType.MERGED
    assert (merged.customer_id, merged.absorbed_customer_id) == (1, 2)
    assert merged.contact_ids == (2, 3)
    assert (merged.email, merged.phone_number) == ("george@hillvalley.edu", "717171")
    assert decision.insert is None


def test_rows_of_a_soft_deleted_primary_hand_over_to_the_oldest_live_row() -> None:
    rows = [
        Member(2, "b@shop.com", "1111", 1, "secondary", START),
        Member(3, "c@shop.com", "1111", 1, "secondary", START + timedelta(1)),
    ]

    decision = decide(rows, email=None, phone_number="1111", now=START)

    (changed,) = decision.events
    assert changed.type is EventType.PRIMARY_CHANGED
    assert (changed.customer_id, changed.previous_customer_id) == (2, 1)
    assert changed.contact_ids == (2, 3)
    assert (decision.promote, decision.relink) == (2, (3,))


def test_a_new_primary_is_the_new_row_in_its_event_and_its_answer() -> None:
    decision = decide([], email="doc@fluxkart.com", phone_number=None, now=START)
    assert decision.events[0].contact_ids == (NEW_ROW,)

    identity, (created,) = decision.settle(7)

    assert identity.primary_id == 7
    assert (created.type, created.customer_id, created.contact_ids) == (
        EventType.CREATED,
        7,
        (7,),
    )


def test_views_show_each_customer_once_in_ascending_primary_order() -> None:
    rows = [
        Member(1, "a@shop.com", "1111", None, "primary", START),
        Member(2, "b@shop.com", "2222", None, "primary", START + timedelta(1)),
        Member(3, "a2@shop.com", "1111", 1, "secondary", START + timedelta(2)),
    ]

    found = views(rows)

    assert [(v.primary_id, v.secondary_ids) for v in found] == [(1, [3]), (2, [])]


@settings(max_examples=examples(3000), deadline=None)
@given(
    requests=requests_strategy,
    max_values=st.integers(1, 6),
    max_partners=st.integers(1, 3),
    phone_first=st.booleans(),
)
def test_decisions_under_limits_answer_like_the_limited_reference_model(
    requests: list[tuple[str | None, str | None]],
    max_values: int,
    max_partners: int,
    phone_first: bool,
) -> None:
    priority = ("phoneNumber", "email") if phone_first else ("email", "phoneNumber")
    limits = Limits(max_values, max_partners, priority)
    table = Table(limits)
    model = LimitedModel(limits)
    for email, phone in requests:
        before = table.next_id
        decision = table.identify(email, phone)
        new_id = before if table.next_id > before else None

        answer, ignored = model.identify(email, phone)
        assert contact(decision, new_id) == answer
        assert [
            {"field": i.field, "reason": i.reason, "limit": i.limit}
            for i in decision.ignored
        ] == ignored
        refused = [e for e in decision.events if e.type is EventType.LINK_REFUSED]
        assert [e.limit_name for e in refused] == [i["limit"] for i in ignored]
        rows = table.live()
        assert_invariants(rows)
        assert_ledger_explains(rows, table.events)
