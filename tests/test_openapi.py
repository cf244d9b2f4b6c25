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
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        # The docs page and its assets are described by the page itself.
        if not rule.endpoint.startswith("swagger_ui.")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    assert documented == served


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
