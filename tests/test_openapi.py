"""The OpenAPI document at /openapi.json: valid, complete, and true."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from live import live_service

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Fuzzing checks: no 5xx, and every status, header, content type and body is
# the one the document gives. (Schema-valid bodies may still be refused: the
# document cannot say everything email-validator checks.)
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_openapi_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_openapi_document_describes_exactly_the_app_routes(
    app: Flask, document: dict[str, Any]
) -> None:
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    served = {
        # Flask's "<int:contact_id>" is OpenAPI's "{contact_id}".
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        # The docs page, the console and their assets are pages, not the API.
        if not rule.endpoint.startswith(("swagger_ui.", "console."))
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    assert documented == served


# The read operations whose examples all hold after the worked example.
READS = [
    ("/customers/lookup", "post"),
    ("/customers/holders", "post"),
    ("/customers/{contact_id}", "get"),
    ("/customers/{contact_id}/history", "get"),
    ("/customers/{contact_id}/graph", "get"),
    ("/events", "get"),
]
# The name of the read examples that hold after the detach and erase examples.
AFTER_CORRECTIONS = "after-corrections"

# The operations that correct customers; their examples run after the reads'.
CORRECTIONS = [
    ("/customers/{contact_id}/detach", "post"),
    ("/customers/{contact_id}", "delete"),
]
# The detach and erase examples that are dry runs.
DRY_RUN = "dry-run"
# The erase example that a service without ERASURE_KEY answers.
WITHOUT_KEY = "suppress-without-key"


def test_worked_example_of_the_document_is_what_the_service_answers(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    replay_identify_examples(client, document)


def replay_identify_examples(client: FlaskClient, document: dict[str, Any]) -> None:
    """Send each request example of /identify, in order; each is answered with
    the response example of the same name (200, or 422 when nothing usable
    is left), if there is one, and else with a 200."""
    operation = document["paths"]["/identify"]["post"]
    asked = operation["requestBody"]["content"]["application/json"]["examples"]
    for name, example in asked.items():
        response = client.post("/identify", json=example["value"])
        status, answer = documented_answer(operation, name)
        assert response.status_code == status, (name, response.get_json())
        if answer is not None:
            assert response.get_json() == answer, name


def documented_answer(
    operation: dict[str, Any], name: str
) -> tuple[int, dict[str, Any] | None]:
    """The status and body of the response example called `name` (200 and no
    body when there is none)."""
    for status, response in operation["responses"].items():
        for content in response.get("content", {}).values():
            if name in content.get("examples", {}):
                return int(status), content["examples"][name]["value"]
    return 200, None


@pytest.mark.parametrize(("path", "method"), READS)
def test_read_examples_are_what_the_service_answers_after_the_worked_example(
    client: FlaskClient, document: dict[str, Any], path: str, method: str
) -> None:
    """Each 200 example of a read but AFTER_CORRECTIONS is asked with the
    parameter and body examples of the same name."""
    replay_identify_examples(client, document)
    operation = document["paths"][path][method]
    answers = operation["responses"]["200"]["content"]["application/json"]
    for name, answer in answers["examples"].items():
        if name == AFTER_CORRECTIONS:
            continue
        response = ask(client, document, path, method, name)
        assert response.status_code == 200, (name, response.get_json())
        assert stable(response.get_json()) == stable(answer["value"]), name


def ask(
    client: FlaskClient, document: dict[str, Any], path: str, method: str, name: str
) -> TestResponse:
    """Send the request of `path` and `method` built from the parameter and
    body examples called `name`."""
    operation = document["paths"][path][method]
    bodies = operation.get("requestBody", {}).get("content", {})
    bodies = bodies.get("application/json", {}).get("examples", {})
    url, query = path, {}
    for reference in operation.get("parameters", []):
        parameter = resolve(document, reference)
        if name not in parameter.get("examples", {}):
            continue
        value = parameter["examples"][name]["value"]
        if parameter["in"] == "path":
            url = url.replace(f"{{{parameter['name']}}}", str(value))
        else:
            query[parameter["name"]] = (
                value if isinstance(value, str) else json.dumps(value)
            )
    body = bodies[name]["value"] if name in bodies else None
    return client.open(url, method=method, query_string=query, json=body)


def test_detach_and_erase_examples_are_what_the_service_answers(
    app: Flask, client: FlaskClient, document: dict[str, Any]
) -> None:
    """After the worked example, each detach example and then each erase
    example, in order, is answered with the response example of the same name
    (the erasures by a service with ERASURE_KEY, but WITHOUT_KEY); the DRY_RUN
    examples add no event. Then the reads' AFTER_CORRECTIONS examples hold."""
    replay_identify_examples(client, document)
    keyless = app.config["GUARD"]
    keyed = dataclasses.replace(keyless, erasure_key=b"documented-example-key")
    for path, method in CORRECTIONS:
        operation = document["paths"][path][method]
        for name in example_names(operation):
            app.config["GUARD"] = keyless if name == WITHOUT_KEY else keyed
            events = client.get("/events").get_json()
            response = ask(client, document, path, method, name)
            status, answer = documented_answer(operation, name)
            assert response.status_code == status, (name, response.get_json())
            assert response.get_json() == answer, name
            if name == DRY_RUN:
                assert client.get("/events").get_json() == events, name

    erase = document["paths"]["/customers/{contact_id}"]["delete"]
    response = client.delete("/customers/3?dryRun=yes")
    assert response.status_code == 400
    problem = erase["responses"]["400"]["content"]["application/problem+json"]
    assert response.get_json() == problem["example"]

    for path, method in READS:
        answers = document["paths"][path][method]["responses"]["200"]["content"]
        examples = answers["application/json"]["examples"]
        if AFTER_CORRECTIONS in examples:
            response = ask(client, document, path, method, AFTER_CORRECTIONS)
            assert response.status_code == 200, (path, response.get_json())
            expected = examples[AFTER_CORRECTIONS]["value"]
            assert stable(response.get_json()) == stable(expected), path


def example_names(operation: dict[str, Any]) -> list[str]:
    """The names of the operation's request examples, in the document's order:
    those of its body, or else of its parameters."""
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        return list(body["application/json"]["examples"])
    names: dict[str, None] = {}
    for parameter in operation.get("parameters", []):
        names.update(dict.fromkeys(parameter.get("examples", {})))
    return list(names)


def test_nothing_usable_examples_are_what_the_service_answers(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    """The 422 example of each operation that reads a contact body is what its
    request example of the same name gets, and nothing is stored."""
    for path in ("/identify", "/customers/lookup"):
        operation = document["paths"][path]["post"]
        examples = operation["requestBody"]["content"]["application/json"]["examples"]
        answers = operation["responses"]["422"]["content"]["application/problem+json"]
        for name, answer in answers["examples"].items():
            response = client.post(path, json=examples[name]["value"])
            assert response.status_code == 422, (path, name)
            assert response.mimetype == "application/problem+json"
            assert response.get_json() == answer["value"], (path, name)
    assert client.get("/events").get_json()["events"] == []


def test_blocked_values_examples_are_what_the_service_answers(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    """The two POST examples, in order, on an empty table; then the list; then
    the DELETE examples and the 409s."""
    path = document["paths"]["/blocked-values"]
    asked = path["post"]["requestBody"]["content"]["application/json"]["examples"]
    created = path["post"]["responses"]["201"]["content"]["application/json"]
    for name, example in asked.items():
        response = client.post("/blocked-values", json=example["value"])
        assert response.status_code == 201, (name, response.get_json())
        answer = created["examples"][name]["value"]
        assert without_time(response.get_json()) == without_time(answer), name
        assert response.headers["Location"] == f"/blocked-values/{answer['id']}"

    listed = path["get"]["responses"]["200"]["content"]["application/json"]
    response = client.get("/blocked-values")
    assert response.status_code == 200
    answer = listed["examples"]["after-two"]["value"]
    assert [without_time(item) for item in response.get_json()["blockedValues"]] == [
        without_time(item) for item in answer["blockedValues"]
    ]
    assert response.get_json()["next"] == answer["next"]

    conflicts = path["post"]["responses"]["409"]["content"]["application/problem+json"]
    response = client.post("/blocked-values", json=asked["phone"]["value"])
    assert response.status_code == 409
    assert response.get_json() == conflicts["examples"]["duplicate"]["value"]
    response = client.post("/blocked-values", json={"phoneNumber": "0000000"})
    assert response.status_code == 409
    assert response.get_json() == conflicts["examples"]["builtin"]["value"]

    delete = document["paths"]["/blocked-values/{value_id}"]["delete"]
    ids = delete["parameters"][0]["examples"]
    response = client.delete(f"/blocked-values/{ids['shop-value']['value']}")
    assert response.status_code == 204
    response = client.delete(f"/blocked-values/{ids['builtin']['value']}")
    assert response.status_code == 409
    problem = delete["responses"]["409"]["content"]["application/problem+json"]
    assert response.get_json() == problem["example"]
    response = client.delete("/blocked-values/99")
    assert response.status_code == 404
    problem = delete["responses"]["404"]["content"]["application/problem+json"]
    assert response.get_json() == problem["example"]


def without_time(item: dict[str, Any]) -> dict[str, Any]:
    """A blocked value without when it was added, which differs on every run."""
    return {key: value for key, value in item.items() if key != "createdAt"}


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its "$ref" (a local one) points to."""
    if "$ref" not in node:
        return node
    for key in node["$ref"].removeprefix("#/").split("/"):
        document = document[key]
    return document


def stable(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without what differs on every run: when each event happened, the
    id of the request that caused it, and when each row was written."""
    unstable = {"at", "requestId", "createdAt", "updatedAt"}
    if "nodes" in body:
        return {
            **body,
            "nodes": [without(node, unstable) for node in body["nodes"]],
            "edges": [without(edge, unstable) for edge in body["edges"]],
        }
    if "events" not in body:
        return body
    return {**body, "events": [without(event, unstable) for event in body["events"]]}


def without(item: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in keys}


def test_docs_page_loads_its_assets_from_the_app_itself(client: FlaskClient) -> None:
    page = client.get("/docs/").get_data(as_text=True)

    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/docs/swagger-ui-bundle.js" in assets
    for asset in assets:
        assert asset.startswith("/docs/")
        assert client.get(asset).status_code == 200
    assert '"url": "/openapi.json"' in page


def test_fuzzing_the_live_app_finds_no_5xx_and_no_undocumented_response(
    tmp_path: Path,
) -> None:
    env = {
        "API_KEYS": "fuzz-key",
        "ERASURE_KEY": "fuzz-erasure-key",
        "WEBHOOK_SECRET_KEY": "fuzz-webhook-secret-key-of-32-characters",
    }
    with live_service(tmp_path, workers=2, env=env) as url:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{url}/openapi.json",
                "--header=Authorization: Bearer fuzz-key",
                f"--checks={CHECKS}",
                "--max-examples=40",
                "--generation-database=none",
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout + result.stderr
