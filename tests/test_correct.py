"""The pure corrections (correct.detach, correct.erase) without a database:
thousands of random sequences of identifies, detaches and erasures, applied
to an in-memory table, answer exactly as the reference model, keep every
invariant and leave a ledger whose replay is the table; and the cases the
model does not reach (links from before the ledger, soft-deleted rows)."""

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correct import Correction, Evidence, NotHeld, detach, erase
from invariants import assert_invariants, assert_ledger_explains
from reconcile import EMAIL, PHONE_NUMBER, PRIMARY, SECONDARY, EventType, Member
from reference_model import EMAILS, PHONES, START, ReferenceModel, Table, examples

pytestmark = pytest.mark.quick

KINDS = {EMAIL: "email", PHONE_NUMBER: "phone"}


class CorrectedTable(Table):
    """The in-memory table, corrected as writes.correct_customer would."""

    def customer(self, contact_id: int) -> list[Member]:
        owner = self.rows[contact_id].customer_id
        return [row for row in self.rows.values() if row.customer_id == owner]

    def evidence(self) -> Evidence:
        pairs = frozenset((e, p) for e, p in self.merged if e and p)
        return Evidence(merged=pairs)

    def detach(self, contact_id: int, field: str, value: str) -> Correction:
        correction = detach(
            self.customer(contact_id),
            [],
            field=field,
            value=value,
            evidence=self.evidence(),
        )
        self.correct(correction)
        return correction

    def erase(self, contact_id: int) -> Correction:
        correction = erase(self.customer(contact_id), [])
        self.correct(correction)
        return correction

    def correct(self, correction: Correction) -> None:
        for row_id in correction.cleared:
            row = self.rows[row_id]
            self.rows[row_id] = (
                replace(row, email=None)
                if correction.field == EMAIL
                else replace(row, phone_number=None)
            )
        for row_id, target in correction.links:
            precedence = PRIMARY if target is None else SECONDARY
            self.rows[row_id] = replace(
                self.rows[row_id], linked_id=target, link_precedence=precedence
            )
        for row_id in correction.deleted:
            del self.rows[row_id]
        for field, value in correction.forgotten:
            self.merged = {
                (
                    None if field == EMAIL and e == value else e,
                    None if field == PHONE_NUMBER and p == value else p,
                )
                for e, p in self.merged
            }
        self.record(correction.events)


def contacts(correction: Correction) -> list[dict[str, object]]:
    return [
        {
            "primaryContactId": identity.primary_id,
            "primaryContatctId": identity.primary_id,
            "emails": identity.emails,
            "phoneNumbers": identity.phone_numbers,
            "secondaryContactIds": identity.secondary_ids,
        }
        for identity in correction.customers
    ]


VALUES = [(EMAIL, e) for e in EMAILS] + [(PHONE_NUMBER, p) for p in PHONES]


@settings(max_examples=examples(3000), deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("identify"),
                st.none() | st.sampled_from(EMAILS),
                st.none() | st.sampled_from(PHONES),
            ).filter(lambda step: step[1:] != (None, None)),
            st.tuples(st.just("detach"), st.integers(1, 30), st.sampled_from(VALUES)),
            st.tuples(st.just("erase"), st.integers(1, 30)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_corrections_answer_like_the_reference_model_and_the_ledger_replays(
    steps: list[tuple[object, ...]],
) -> None:
    table = CorrectedTable()
    model = ReferenceModel()
    for step in steps:
        if step[0] == "identify":
            email, phone = step[1], step[2]
            table.identify(email, phone)  # type: ignore[arg-type]
            model.identify(email, phone)  # type: ignore[arg-type]
        elif step[0] == "detach":
            contact_id, (field, value) = step[1], step[2]  # type: ignore[misc]
            if contact_id not in table.rows:
                continue
            try:
                expected = model.detach(contact_id, KINDS[field], value)
            except ValueError:
                with pytest.raises(NotHeld):
                    table.detach(contact_id, field, value)
                continue
            assert contacts(table.detach(contact_id, field, value)) == expected
        else:
            contact_id = step[1]
            if contact_id not in table.rows:
                continue
            erased, _ = model.erase(contact_id)  # type: ignore[arg-type]
            assert list(table.erase(contact_id).deleted) == erased  # type: ignore[arg-type]
        rows = table.live()
        assert_invariants(rows, detached=True)
        assert_ledger_explains(rows, table.events)


def row(
    row_id: int,
    email: str | None,
    phone: str | None,
    linked_id: int | None = None,
) -> Member:
    precedence = PRIMARY if linked_id is None else SECONDARY
    return Member(
        row_id, email, phone, linked_id, precedence, START + timedelta(row_id)
    )


def test_a_shared_phone_detached_splits_rows_that_only_it_joined() -> None:
    rows = [
        row(1, "a@shop.com", "5550"),
        row(2, "b@shop.com", "5550", 1),
        row(3, None, "5550", 1),
    ]

    done = detach(rows, [], field=PHONE_NUMBER, value="5550", evidence=Evidence())

    assert done.deleted == (3,)
    assert done.cleared == (1, 2)
    assert done.links == ((2, None),)
    assert [(c.primary_id, c.emails, c.phone_numbers) for c in done.customers] == [
        (1, ["a@shop.com"], []),
        (2, ["b@shop.com"], []),
    ]
    detached, *splits = done.events
    assert (detached.type, detached.customer_id, detached.contact_ids) == (
        EventType.DETACHED,
        1,
        (3,),
    )
    assert [
        (e.type, e.customer_id, e.contact_ids, e.previous_customer_id) for e in splits
    ] == [
        (EventType.SPLIT, 1, (1,), 1),
        (EventType.SPLIT, 2, (2,), 1),
    ]
    assert all(e.email is None and e.phone_number is None for e in done.events)
    assert done.forgotten == ((PHONE_NUMBER, "5550"),)


def test_a_merge_whose_two_values_remain_keeps_its_customers_together() -> None:
    rows = [
        row(1, "a@shop.com", "1111"),
        row(2, "b@shop.com", "2222", 1),
        row(3, "b@shop.com", "3333", 1),
    ]
    evidence = Evidence(merged=frozenset({("a@shop.com", "2222")}))

    done = detach(rows, [], field=PHONE_NUMBER, value="3333", evidence=evidence)

    assert [c.primary_id for c in done.customers] == [1]
    assert [e.type for e in done.events] == [EventType.DETACHED]
    assert done.links == ()


def test_a_link_from_before_the_ledger_is_never_undone() -> None:
    rows = [
        row(1, "a@shop.com", "1111"),
        row(2, "b@shop.com", "1111", 1),
        row(3, "c@shop.com", "3333", 1),
    ]
    evidence = Evidence(legacy=frozenset({(3, 1)}))

    done = detach(rows, [], field=PHONE_NUMBER, value="1111", evidence=evidence)

    assert [(c.primary_id, c.secondary_ids) for c in done.customers] == [
        (1, [3]),
        (2, []),
    ]


def test_a_legacy_link_to_a_deleted_row_still_joins_the_rows_linked_to_it() -> None:
    rows = [
        row(1, None, "1111"),
        row(2, "b@shop.com", None, 1),
        row(3, "c@shop.com", None, 1),
    ]
    evidence = Evidence(legacy=frozenset({(2, 1), (3, 1)}))

    done = detach(rows, [], field=PHONE_NUMBER, value="1111", evidence=evidence)

    assert done.deleted == (1,)
    assert [(c.primary_id, c.secondary_ids) for c in done.customers] == [(2, [3])]
    assert [(e.type, e.customer_id, e.previous_customer_id) for e in done.events] == [
        (EventType.DETACHED, 1, None),
        (EventType.PRIMARY_CHANGED, 2, 1),
    ]


def test_detaching_the_only_value_of_a_one_row_customer_leaves_no_customer() -> None:
    done = detach(
        [row(1, "a@shop.com", None)],
        [],
        field=EMAIL,
        value="a@shop.com",
        evidence=Evidence(),
    )

    assert (done.deleted, done.customers) == ((1,), ())
    assert [e.type for e in done.events] == [EventType.DETACHED]


def test_detaching_a_value_the_customer_does_not_hold_is_refused() -> None:
    with pytest.raises(NotHeld):
        detach(
            [row(1, "a@shop.com", "1111")],
            [],
            field=EMAIL,
            value="b@shop.com",
            evidence=Evidence(),
        )


def test_soft_deleted_rows_lose_the_value_and_go_with_a_deleted_row() -> None:
    rows = [row(1, "a@shop.com", "1111"), row(2, None, "2222", 1)]
    retired = [
        row(3, "old@shop.com", "2222", 2),
        row(4, "x@shop.com", "2222", 1),
        row(5, "y@shop.com", None, 3),
    ]
    evidence = Evidence(merged=frozenset({("a@shop.com", "2222")}))

    done = detach(rows, retired, field=PHONE_NUMBER, value="2222", evidence=evidence)

    assert done.deleted == (2, 3, 5)
    assert done.cleared == (4,)


def test_rows_of_a_soft_deleted_primary_are_handed_over_by_a_detach() -> None:
    rows = [row(2, "b@shop.com", "1111", 1), row(3, "c@shop.com", "1111", 1)]
    retired = [row(1, "a@shop.com", "9999")]

    done = detach(rows, retired, field=EMAIL, value="c@shop.com", evidence=Evidence())

    assert done.deleted == ()
    assert done.links == ((2, None), (3, 2))
    assert [(e.type, e.customer_id, e.previous_customer_id) for e in done.events] == [
        (EventType.DETACHED, 1, None),
        (EventType.PRIMARY_CHANGED, 2, 1),
    ]


def test_erasing_deletes_every_row_and_forgets_every_value_without_keeping_one() -> (
    None
):
    rows = [row(1, "a@shop.com", "1111"), row(2, "b@shop.com", "1111", 1)]
    retired = [row(3, "old@shop.com", "3333", 1)]

    done = erase(rows, retired)

    assert done.deleted == (1, 2, 3)
    assert set(done.forgotten) == {
        (EMAIL, "a@shop.com"),
        (EMAIL, "b@shop.com"),
        (EMAIL, "old@shop.com"),
        (PHONE_NUMBER, "1111"),
        (PHONE_NUMBER, "3333"),
    }
    (erased,) = done.events
    assert (erased.type, erased.customer_id, erased.contact_ids) == (
        EventType.ERASED,
        1,
        (1, 2, 3),
    )
    assert (erased.email, erased.phone_number) == (None, None)


def test_every_event_of_a_detach_carries_the_reason_support_gave() -> None:
    rows = [
        row(1, None, "5550"),
        row(2, "a@shop.com", "5550", 1),
        row(3, "b@shop.com", "5550", 1),
    ]

    done = detach(
        rows,
        [],
        field=PHONE_NUMBER,
        value="5550",
        evidence=Evidence(),
        reason="TICKET-4711",
    )

    assert [e.type for e in done.events] == [
        EventType.DETACHED,
        EventType.SPLIT,
        EventType.SPLIT,
    ]
    assert {e.reason for e in done.events} == {"TICKET-4711"}
    assert done.reasons_forgotten == ()


def test_an_erasure_carries_its_reason_and_forgets_those_its_rows_took_part_in() -> (
    None
):
    rows = [row(1, "a@shop.com", "1111"), row(2, "b@shop.com", "1111", 1)]
    retired = [row(3, "old@shop.com", "3333", 1)]

    done = erase(rows, retired, reason="GDPR-17")

    (erased,) = done.events
    assert erased.reason == "GDPR-17"
    assert done.reasons_forgotten == (1, 2, 3)
