"""`flask --app app customers …`: detach and erase for support staff, the same
operations as POST /customers/{id}/detach and DELETE /customers/{id}, with
the same locks, rules and ledger (docs/support.md).
Events they append carry no request id. `holders`, as POST /customers/holders,
finds the customers to detach a value from."""

import sys

import click
from flask import current_app
from flask.cli import AppGroup

import reads
import writes
from correct import Correction, NotHeld
from guard import Guard
from masking import mask
from models import db
from reconcile import EMAIL, PHONE_NUMBER
from validation import (
    MAX_REASON_LENGTH,
    InvalidInput,
    check_email,
    normalise_phone_number,
    parse_holders,
    parse_reason,
)

customers = AppGroup(
    "customers",
    help="Correct customers: find who holds a value, detach it, erase.",
)


def _reason(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    """--reason checked as the API checks `reason` (validation.parse_reason)."""
    if value is None:
        return None
    try:
        return parse_reason(value)
    except InvalidInput as error:
        raise click.BadParameter(str(error)) from None


reason_option = click.option(
    "--reason",
    callback=_reason,
    help=f"Why, for the ledger: a ticket reference (1 to {MAX_REASON_LENGTH}"
    " characters). Stored on the events; never logged or printed.",
)


@customers.command("detach")
@click.argument("contact_id", type=click.IntRange(1))
@click.option("--email", help="The email to take away.")
@click.option("--phone-number", help="The phone number to take away.")
@click.option("--block", is_flag=True, help="Add the value to the blocked values.")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@reason_option
def detach(
    contact_id: int,
    email: str | None,
    phone_number: str | None,
    block: bool,
    dry_run: bool,
    reason: str | None,
) -> None:
    """Take an email or a phone number away from the customer of CONTACT_ID
    and regroup its other rows by the evidence that remains."""
    if (email is None) == (phone_number is None):
        raise click.UsageError("Give exactly one of --email and --phone-number.")
    try:
        if email is not None:
            field, value = EMAIL, check_email(email.strip().lower())
        else:
            field, value = PHONE_NUMBER, normalise_phone_number(phone_number) or ""
    except InvalidInput as error:
        raise click.BadParameter(str(error)) from None
    with db.engine.connect() as connection:
        try:
            done, _ = writes.detach(
                connection,
                contact_id,
                field=field,
                value=value,
                request_id=None,
                block=block,
                dry_run=dry_run,
                reason=reason,
            )
        except NotHeld:
            raise click.ClickException(
                f"Customer {contact_id} holds no such {field}; nothing was changed."
            ) from None
    done = _found(done, contact_id)
    verb = "Would detach" if dry_run else "Detached"
    click.echo(f"{verb} {mask(value)} from customer {done.customer_id}.")
    _report(done, dry_run)
    if block:
        click.echo(f"{'Would block' if dry_run else 'Blocked'} {mask(value)}.")
    for identity in done.customers:
        click.echo(
            f"  customer {identity.primary_id}: rows"
            f" {[identity.primary_id, *identity.secondary_ids]},"
            f" {len(identity.emails)} email(s), {len(identity.phone_numbers)} phone(s)"
        )


@customers.command("holders")
@click.option("--email", help="The email to look for.")
@click.option("--phone-number", help="The phone number to look for.")
@click.option(
    "--show-values",
    is_flag=True,
    help="Show emails and phone numbers in clear (masked otherwise).",
)
def holders(email: str | None, phone_number: str | None, show_values: bool) -> None:
    """List the customers holding an email or a phone number, blocked or not
    (a placeholder stored before it was blocked): those to detach it from.
    Changes nothing."""
    if (email is None) == (phone_number is None):
        raise click.UsageError("Give exactly one of --email and --phone-number.")
    try:
        field, value = parse_holders({EMAIL: email, PHONE_NUMBER: phone_number})
    except InvalidInput as error:
        raise click.BadParameter(str(error)) from None
    with db.engine.connect() as connection:
        found = reads.holders(connection, field=field, value=value)
    shown = (lambda text: text) if show_values else mask
    click.echo(f"{len(found)} customer(s) hold the {field} {shown(value)}.")
    for identity in found:
        click.echo(
            f"  customer {identity.primary_id}: rows"
            f" {[identity.primary_id, *identity.secondary_ids]},"
            f" {len(identity.emails)} email(s), {len(identity.phone_numbers)} phone(s)"
        )
        for label, values in (
            ("emails", identity.emails),
            ("phones", identity.phone_numbers),
        ):
            click.echo(f"    {label}: {', '.join(map(shown, values)) or '-'}")


@customers.command("erase")
@click.argument("contact_id", type=click.IntRange(1))
@click.option(
    "--suppress",
    is_flag=True,
    help="Keep the values as keyed hashes (ERASURE_KEY) so that they are never"
    " matched or stored again.",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@reason_option
@click.option(
    "--yes",
    is_flag=True,
    help="Erase without asking. Needed when not run on a terminal (a script, a pipe).",
)
def erase(
    contact_id: int, suppress: bool, dry_run: bool, reason: str | None, yes: bool
) -> None:
    """Erase the customer of CONTACT_ID: every row, every copy of its values
    in the ledger (GDPR art. 17). On a terminal it first says what would be
    erased and asks; elsewhere it needs --yes."""
    guard = current_app.config["GUARD"]
    if suppress and guard.erasure_key is None:
        raise click.ClickException(
            "--suppress needs ERASURE_KEY, the secret that suppressed values are"
            " hashed with, and it is not set. Nothing was erased."
        )
    if not dry_run and not yes:
        # A prompt that nobody can see (a script, a pipe) must not be answered
        # by whatever happens to be on stdin.
        if not sys.stdin.isatty():
            raise click.ClickException(
                "An erasure cannot be undone, and without a terminal nobody can"
                " confirm it: add --yes to erase without asking. Nothing was erased."
            )
        preview, _ = _erase(contact_id, guard, suppress, reason, dry_run=True)
        _say_erased(preview, suppress, None, dry_run=True)
        if not click.confirm(
            f"Erase customer {preview.customer_id}? This cannot be undone.",
            default=False,
        ):
            raise click.ClickException("Not confirmed. Nothing was erased.")
    done, remains = _erase(contact_id, guard, suppress, reason, dry_run=dry_run)
    _say_erased(done, suppress, remains, dry_run=dry_run)


def _erase(
    contact_id: int,
    guard: Guard,
    suppress: bool,
    reason: str | None,
    *,
    dry_run: bool,
) -> tuple[Correction, str | None]:
    """The erasure, and where copies of its values remain (writes.erase)."""
    with db.engine.connect() as connection:
        done, _, remains = writes.erase(
            connection,
            contact_id,
            request_id=None,
            guard=guard,
            suppress=suppress,
            dry_run=dry_run,
            reason=reason,
        )
    return _found(done, contact_id), remains


def _say_erased(
    done: Correction, suppress: bool, remains: str | None, *, dry_run: bool
) -> None:
    verb = "Would erase" if dry_run else "Erased"
    click.echo(f"{verb} customer {done.customer_id}.")
    _report(done, dry_run)
    if suppress:
        would = "Would suppress" if dry_run else "Suppressed"
        click.echo(f"{would} {len(done.forgotten)} value(s).")
    if dry_run:
        return
    if remains is None:
        click.echo("No copy of its values is left in the database file or its WAL.")
    else:
        click.echo(f"Copies of its values remain: {remains}.")


def _found(done: Correction | None, contact_id: int) -> Correction:
    if done is None:
        raise click.ClickException(f"No live contact has the id {contact_id}.")
    return done


def _report(done: Correction, dry_run: bool) -> None:
    would = "would be " if dry_run else ""
    click.echo(f"Rows {would}deleted: {list(done.deleted)}.")
    click.echo(
        f"Values {would}nulled in the ledger: {len(done.forgotten)}."
        + (" Nothing was changed (dry run)." if dry_run else "")
    )
