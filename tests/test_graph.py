"""GET /customers/{id}/graph: the customer's rows, values and evidence, the
same through every live id, its bridges exactly the values whose detach
splits it, at a cost that the rest of the table does not change."""

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert

import graph
from costs import instructions, seed_cluster
from models import LegacyLink, db


def identify(client: FlaskClient, email: str | None, phone: str | None) -> None:
    response = client.post("/identify", json={"email": email, "phoneNumber": phone})
    assert response.status_code == 200, response.get_json()


def graph_of(client: FlaskClient, contact_id: int) -> dict[str, Any]:
    response = client.get(f"/customers/{contact_id}/graph")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def values(document: dict[str, Any]) -> dict[str, bool]:
    return {
        node["value"]: node["bridge"]
        for node in document["nodes"]
        if node["kind"] != "contact"
    }


def test_every_live_id_of_a_customer_answers_the_same_graph(
    client: FlaskClient,
) -> None:
    identify(client, "a@shop.com", "5550001")
    identify(client, "b@shop.com", "5550002")
    identify(client, "a@shop.com", "5550002")
    identify(client, "c@shop.com", "5550002")

    documents = [graph_of(client, contact_id) for contact_id in (1, 2, 3)]

    assert documents[0] == documents[1] == documents[2]
    assert documents[0]["customerId"] == 1
    contacts = [n["contactId"] for n in documents[0]["nodes"] if n["kind"] == "contact"]
    assert contacts == [1, 2, 3]


def test_a_merge_is_an_edge_with_its_event_and_makes_its_values_bridges(
    client: FlaskClient,
) -> None:
    identify(client, "a@shop.com", "5550001")
    identify(client, "b@shop.com", "5550002")
    identify(client, "a@shop.com", "5550002")

    document = graph_of(client, 2)

    merged = [edge for edge in document["edges"] if edge["kind"] == "merged"]
    events = client.get("/events").get_json()["events"]
    merges = [event["id"] for event in events if event["type"] == "customer.merged"]
    assert [edge["eventId"] for edge in merged] == merges
    ids = {node["id"]: node.get("value") for node in document["nodes"]}
    assert (ids[merged[0]["source"]], ids[merged[0]["target"]]) == (
        "a@shop.com",
        "5550002",
    )
    assert values(document) == {
        "a@shop.com": True,
        "b@shop.com": False,
        "5550001": False,
        "5550002": True,
    }


def test_each_value_is_a_bridge_exactly_when_a_dry_run_detach_splits(
    client: FlaskClient,
) -> None:
    for email, phone in [
        ("a@shop.com", "5550001"),
        ("b@shop.com", "5550001"),
        ("b@shop.com", "5550002"),
        ("c@shop.com", "5550003"),
        ("c@shop.com", "5550002"),
        (None, "5550003"),
        ("d@shop.com", None),
        ("d@shop.com", "5550004"),
        ("a@shop.com", "5550004"),
    ]:
        identify(client, email, phone)
    document = graph_of(client, 1)

    for node in document["nodes"]:
        if node["kind"] == "contact":
            continue
        detached = client.post(
            "/customers/1/detach",
            json={node["kind"]: node["value"], "dryRun": True},
        )
        assert detached.status_code == 200, detached.get_json()
        split = len(detached.get_json()["contacts"]) > 1
        assert node["bridge"] == split, node["value"]
    assert graph_of(client, 1) == document


def test_a_legacy_link_is_an_edge_and_keeps_its_rows_together(
    app: Flask, client: FlaskClient
) -> None:
    identify(client, "a@shop.com", "5550001")
    identify(client, "b@shop.com", "5550001")
    assert values(graph_of(client, 1))["5550001"] is True
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(insert(LegacyLink).values(contact_id=2, customer_id=1))

    document = graph_of(client, 1)

    assert {"kind": "legacyLink", "source": "c2", "target": "c1"} in document["edges"]
    assert values(document)["5550001"] is False


def test_an_unknown_or_erased_contact_has_no_graph(client: FlaskClient) -> None:
    identify(client, "a@shop.com", "5550001")
    assert client.delete("/customers/1").status_code == 200

    for contact_id in (1, 2, 2147483648):
        response = client.get(f"/customers/{contact_id}/graph")
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["detail"] == (
            f"No live contact has the id {contact_id}."
        )


def test_reading_a_graph_costs_the_same_whatever_else_the_table_holds(
    app: Flask,
) -> None:
    with app.app_context(), db.engine.begin() as connection:
        seed_cluster(connection, 5)
    with app.app_context(), db.engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            return
        alone, found = instructions(connection, lambda: graph.read(connection, 1))
    with app.app_context(), db.engine.begin() as connection:
        for _ in range(300):
            seed_cluster(connection, 5)
    with app.app_context(), db.engine.connect() as connection:
        crowded, again = instructions(connection, lambda: graph.read(connection, 1))

    assert found is not None and found == again
    assert len(found.rows) == 5
    assert crowded <= alone * 1.1


def test_a_row_a_legacy_link_names_outside_the_customer_is_a_node_not_live(
    app: Flask, client: FlaskClient
) -> None:
    identify(client, "a@shop.com", "5550001")
    identify(client, "b@shop.com", "5550001")
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(insert(LegacyLink).values(contact_id=2, customer_id=99))

    document = graph_of(client, 2)

    named = [node for node in document["nodes"] if node["id"] == "c99"]
    assert named == [{"id": "c99", "kind": "contact", "contactId": 99, "live": False}]
    assert {"kind": "legacyLink", "source": "c2", "target": "c99"} in document["edges"]
    assert values(document)["5550001"] is True
