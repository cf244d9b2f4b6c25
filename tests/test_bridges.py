"""correct.bridges against correct.detach itself: on random customers (rows
sharing values, merge pairs, legacy links, rows holding one value or two), a
value is a bridge exactly when detaching it answers more than one customer."""

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correct import Evidence, bridges, detach
from reconcile import EMAIL, PHONE_NUMBER, PRIMARY, SECONDARY, Member
from reference_model import START, examples

pytestmark = pytest.mark.quick

EMAILS = ["a@x.io", "b@x.io", "c@x.io", "d@x.io"]
PHONES = ["1111", "2222", "3333", "4444"]


@st.composite
def customers(draw: st.DrawFn) -> tuple[list[Member], Evidence]:
    pairs = draw(
        st.lists(
            st.tuples(
                st.none() | st.sampled_from(EMAILS),
                st.none() | st.sampled_from(PHONES),
            ).filter(lambda pair: pair != (None, None)),
            min_size=1,
            max_size=9,
        )
    )
    primary = draw(st.integers(1, 3))
    rows = [
        Member(
            primary + index,
            email,
            phone,
            None if index == 0 else primary,
            PRIMARY if index == 0 else SECONDARY,
            START + timedelta(seconds=index),
        )
        for index, (email, phone) in enumerate(pairs)
    ]
    ids = [row.id for row in rows]
    merged = draw(
        st.frozensets(st.tuples(st.sampled_from(EMAILS), st.sampled_from(PHONES)))
    )
    # A link may name a row that is gone (an id no live row has).
    legacy = draw(
        st.frozensets(
            st.tuples(st.sampled_from(ids), st.sampled_from([*ids, 90, 91])),
            max_size=4,
        )
    )
    return rows, Evidence(merged=merged, legacy=legacy)


@settings(max_examples=examples(2000), deadline=None)
@given(customers())
def test_a_value_is_a_bridge_exactly_when_detaching_it_splits_the_customer(
    customer: tuple[list[Member], Evidence],
) -> None:
    rows, evidence = customer
    found = bridges(rows, evidence)
    held = {
        (field, value)
        for row in rows
        for field, value in ((EMAIL, row.email), (PHONE_NUMBER, row.phone_number))
        if value is not None
    }
    for field, value in held:
        done = detach(rows, [], field=field, value=value, evidence=evidence)
        assert ((field, value) in found) == (len(done.customers) > 1), (field, value)
    assert found <= held


def test_a_phone_that_alone_joins_two_emails_is_a_bridge_and_they_are_not() -> None:
    rows = [
        Member(1, "a@x.io", "1111", None, PRIMARY, START),
        Member(2, "b@x.io", "1111", 1, SECONDARY, START + timedelta(seconds=1)),
    ]
    assert bridges(rows, Evidence()) == {(PHONE_NUMBER, "1111")}
    merged = Evidence(merged=frozenset({("a@x.io", "2222"), ("b@x.io", "2222")}))
    assert bridges(rows, merged) == {(PHONE_NUMBER, "1111")}
    joined = Evidence(legacy=frozenset({(2, 1)}))
    assert bridges(rows, joined) == frozenset()


def test_the_graph_benchs_customer_has_100_values_and_98_bridges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    from graph_series import chain

    pairs = chain()
    rows = [
        Member(
            n + 1,
            email,
            phone,
            None if n == 0 else 1,
            PRIMARY if n == 0 else SECONDARY,
            START + timedelta(seconds=n),
        )
        for n, (email, phone) in enumerate(pairs)
    ]

    found = bridges(rows, Evidence())

    assert len(rows) == 99
    assert len({e for e, _ in pairs}) + len({p for _, p in pairs}) == 100
    assert len(found) == 98
    assert (EMAIL, pairs[0][0]) not in found
    assert (PHONE_NUMBER, pairs[-1][1]) not in found
