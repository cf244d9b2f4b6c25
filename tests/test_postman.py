"""The Postman collection, run by newman against real gunicorn."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from live import live_service

NEWMAN = ROOT / "node_modules" / ".bin" / "newman"
COLLECTION = ROOT / "postman" / "identity-reconciliation.postman_collection.json"


def test_postman_collection_passes_twice_against_the_same_database(
    tmp_path: Path,
) -> None:
    if not NEWMAN.exists():
        reason = "newman is not installed: run `npm ci` (package-lock.json)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true: the collection must run")
        pytest.skip(reason)
    env = {"API_KEYS": "postman-key", "ERASURE_KEY": "postman-erasure-key"}
    with live_service(tmp_path, env=env) as url:
        result = subprocess.run(
            [
                str(NEWMAN),
                "run",
                str(COLLECTION),
                f"--env-var=baseUrl={url}",
                "--env-var=apiKey=postman-key",
                # The second pass meets the data of the first.
                "--iteration-count=2",
                "--reporters=cli",
                "--disable-unicode",
                "--color=off",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr
