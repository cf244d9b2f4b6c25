"""`flask --app app contacts audit`: the largest customers and the values with
the most partners, to choose MAX_VALUES_PER_CUSTOMER and
MAX_PARTNERS_PER_VALUE from the data and to find placeholders worth blocking
(docs/api.md: "Protection against over-merging").

Each list is one set-based statement (GROUP BY over the table, ORDER BY and
LIMIT in the database), so it runs on millions of rows without a Python loop
over them. Values are masked as in the logs (masking.mask) unless
--show-values is given."""

from dataclasses import dataclass

import click
from flask.cli import AppGroup
from sqlalchemy import (
    CompoundSelect,
    Connection,
    func,
    literal_column,
    select,
    union,
    union_all,
)

from masking import mask
from models import Contact, Event, db
from reconcile import EMAIL, PHONE_NUMBER, EventType

contacts = AppGroup(
    "contacts",
    help="Inspect the contact table; purge deleted values from the files;"
    " import a shop's history; export every customer.",
)

_LIVE = Contact.deleted_at.is_(None)
_CUSTOMER = func.coalesce(Contact.linked_id, Contact.id)


@dataclass(frozen=True)
class Customer:
    """One customer: its primary's id, its live rows and distinct values."""

    id: int
    rows: int
    emails: int
    phones: int


@dataclass(frozen=True)
class SharedValue:
    """A value and how many distinct values of the other kind it is paired
    with, in live rows or merge events (what MAX_PARTNERS_PER_VALUE counts)."""

    kind: str
    value: str
    partners: int


@dataclass(frozen=True)
class Audit:
    rows: int
    customers: int
    largest: list[Customer]
    shared: list[SharedValue]


def audit(connection: Connection, *, top: int) -> Audit:
    """The `top` largest customers (most distinct emails plus phones, then
    most rows, then lowest id) and the `top` values with the most partners
    (then emails before phones, then by value)."""
    rows, customers = connection.execute(
        select(func.count(), func.count(_CUSTOMER.distinct())).where(_LIVE)
    ).one()
    emails = func.count(Contact.email.distinct())
    phones = func.count(Contact.phone_number.distinct())
    largest = connection.execute(
        select(_CUSTOMER, func.count(), emails, phones)
        .where(_LIVE)
        .group_by(_CUSTOMER)
        .order_by((emails + phones).desc(), func.count().desc(), _CUSTOMER)
        .limit(top)
    )
    return Audit(
        rows=rows,
        customers=customers,
        largest=[Customer(*row) for row in largest],
        shared=[SharedValue(*row) for row in connection.execute(_shared(top))],
    )


def _shared(top: int) -> CompoundSelect[str, str, int]:
    # Every distinct (email, phone) pair seen together: in a live row, or as
    # the evidence of a merge (which stores no row holding both).
    pairs = union(
        select(Contact.email, Contact.phone_number).where(
            _LIVE, Contact.email.is_not(None), Contact.phone_number.is_not(None)
        ),
        select(Event.email, Event.phone_number).where(
            Event.type == EventType.MERGED.value,
            Event.email.is_not(None),
            Event.phone_number.is_not(None),
        ),
    ).cte("pairs")
    partners = func.count().label("partners")
    by_email = select(
        literal_column(f"'{EMAIL}'").label("kind"),
        pairs.c.email.label("value"),
        partners,
    ).group_by(pairs.c.email)
    by_phone = select(
        literal_column(f"'{PHONE_NUMBER}'").label("kind"),
        pairs.c.phone_number.label("value"),
        partners,
    ).group_by(pairs.c.phone_number)
    return (
        union_all(by_email, by_phone)
        .order_by(literal_column("partners").desc(), "kind", "value")
        .limit(top)
    )


@contacts.command("audit")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many customers and values to list.",
)
@click.option(
    "--show-values",
    is_flag=True,
    help="Show emails and phone numbers in clear (masked otherwise).",
)
def audit_command(top: int, show_values: bool) -> None:
    """List the largest customers and the values shared by the most partners."""
    with db.engine.connect() as connection:
        found = audit(connection, top=top)
    shown = (lambda value: value) if show_values else mask
    click.echo(f"{found.rows} live contacts in {found.customers} customers.")
    click.echo()
    click.echo(
        f"Largest customers (top {top}, by distinct emails + phones,"
        " then rows; MAX_VALUES_PER_CUSTOMER counts emails + phones):"
    )
    click.echo(f"{'customer':>10} {'rows':>8} {'emails':>8} {'phones':>8}")
    for customer in found.largest:
        click.echo(
            f"{customer.id:>10} {customer.rows:>8}"
            f" {customer.emails:>8} {customer.phones:>8}"
        )
    click.echo()
    click.echo(
        f"Values with the most partners (top {top}; partners: distinct values of"
        " the other kind in live rows or merge events, as MAX_PARTNERS_PER_VALUE"
        " counts them):"
    )
    click.echo(f"{'kind':<12} {'partners':>8}  value")
    for value in found.shared:
        click.echo(f"{value.kind:<12} {value.partners:>8}  {shown(value.value)}")
