"""The OpenAPI document at /openapi.json: valid, complete, and true."""

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
        # The docs page and its assets are described by the page itself.
        if not rule.endpoint.startswith("swagger_ui.")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    assert documented == served


# The read operations whose examples all hold after the worked example.
READS = [
    ("/customers/lookup", "post"),
    ("/customers/{contact_id}", "get"),
    ("/customers/{contact_id}/history", "get"),
    ("/events", "get"),
]


def test_worked_example_of_the_document_is_what_the_service_answers(
    client: FlaskClient, document: dict[str, Any]
) -> None:
    responses = document["paths"]["/identify"]["post"]["responses"]
    answers = responses["200"]["content"]["application/json"]["examples"]
    requests = document["paths"]["/identify"]["post"]["requestBody"]
    asked = requests["content"]["application/json"]["examples"]

    for name, example in asked.items():
        response = client.post("/identify", json=example["value"])
        assert response.status_code == 200
        if name in answers:
            assert response.get_json() == answers[name]["value"], name


@pytest.mark.parametrize(("path", "method"), READS)
def test_read_examples_are_what_the_service_answers_after_the_worked_example(
    client: FlaskClient, document: dict[str, Any], path: str, method: str
) -> None:
    """Each 200 example of a read is asked with the parameter and body
    examples of the same name."""
    asked = document["paths"]["/identify"]["post"]["requestBody"]
    for example in asked["content"]["application/json"]["examples"].values():
        assert client.post("/identify", json=example["value"]).status_code == 200
    operation = document["paths"][path][method]
    answers = operation["responses"]["200"]["content"]["application/json"]
    bodies = operation.get("requestBody", {}).get("content", {})
    bodies = bodies.get("application/json", {}).get("examples", {})

    for name, answer in answers["examples"].items():
        url, query = path, {}
        for reference in operation.get("parameters", []):
            parameter = resolve(document, reference)
            if name not in parameter.get("examples", {}):
                continue
            value = parameter["examples"][name]["value"]
            if parameter["in"] == "path":
                url = url.replace(f"{{{parameter['name']}}}", str(value))
            else:
                query[parameter["name"]] = value
        body = bodies[name]["value"] if name in bodies else None
        response = client.open(url, method=method, query_string=query, json=body)
        assert response.status_code == 200, (name, response.get_json())
        assert stable(response.get_json()) == stable(answer["value"]), name


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its "$ref" (a local one) points to."""
    if "$ref" not in node:
        return node
    for key in node["$ref"].removeprefix("#/").split("/"):
        document = document[key]
    return document


def stable(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without what differs on every run: when each event happened and
    the id of the request that caused it."""
    if "events" not in body:
        return body
    unstable = {"at", "requestId"}
    events = [
        {key: value for key, value in event.items() if key not in unstable}
        for event in body["events"]
    ]
    return {**body, "events": events}


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
    env = {"API_KEYS": "fuzz-key"}
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
