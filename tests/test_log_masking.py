"""Personal data sent through every path that logs, to real gunicorn: no
email or phone number may reach stdout or stderr in clear, and the rest of
each line stays legible."""

import json
import sqlite3
from pathlib import Path

import pytest
import requests

from live import live_service, send_raw
from masking import mask

EMAIL = "person@fluxkart.com"
PHONE = "5559876543"
FORMATTED_PHONE = "555-987-6543"
# A support reason may name the person: it is stored, never logged.
REASON = "Ticket ABC: Marty McFly asked"


@pytest.mark.parametrize(
    "text",
    [
        'File "/srv/app.py", line 1234, in identify',
        'connection to server at "10.0.12.7", port 5432 failed',
        "Listening at: http://127.0.0.1:8000",
        "Booting worker with pid: 123456",
        "Listening at: http://127.0.0.1:8000 (4194301)",
        "Worker (pid:123456) was sent SIGTERM!",
        "Worker exiting (pid: 123456)",
        "Starting gunicorn 27.0.1",
    ],
)
def test_masking_keeps_line_numbers_ports_pids_and_addresses(text: str) -> None:
    assert mask(text) == text


def test_personal_data_sent_every_way_never_reaches_the_logs_in_clear(
    tmp_path: Path,
) -> None:
    stdout_path, stderr_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    identify = {"email": EMAIL, "phoneNumber": PHONE}
    answers = []
    with (
        stdout_path.open("w") as stdout,
        stderr_path.open("w") as stderr,
        live_service(tmp_path, stdout=stdout, stderr=stderr) as url,
    ):
        for request in (
            f"GET /{EMAIL}/{PHONE} HTTP/1.1 x\r\nHost: x\r\n\r\n",
            f"GET /health HTTP/1.1\r\nX-Customer {EMAIL}\r\n\r\n",
            f"GET /health HTTP/1.1\r\nX-Customer {FORMATTED_PHONE}\r\n\r\n",
            f"GET /health?email={EMAIL} HTTP/1.1\r\nX-Big: {'x' * 9000}\r\n\r\n",
        ):
            answers.append(send_raw(url, request.encode()))
        answers.append(
            requests.get(
                f"{url}/health", headers={"X-Request-ID": PHONE}, timeout=10
            ).headers["X-Request-ID"]
        )
        for body in (
            {"email": f"{EMAIL}@", "phoneNumber": PHONE},
            {"email": EMAIL, "phoneNumber": f"{PHONE}x"},
            {"email": EMAIL, "phoneNumber": [PHONE]},
        ):
            answers.append(requests.post(f"{url}/identify", json=body, timeout=10).text)
        created = requests.post(f"{url}/identify", json=identify, timeout=10).json()
        customer = f"{url}/customers/{created['contact']['primaryContactId']}"
        for body in (
            {"email": "other@fluxkart.com", "reason": REASON},
            {"phoneNumber": PHONE, "dryRun": True, "reason": REASON},
            {"phoneNumber": PHONE, "block": True, "reason": f"{REASON}\x07"},
            {"phoneNumber": PHONE, "block": True, "reason": REASON},
        ):
            requests.post(f"{customer}/detach", json=body, timeout=10)
        requests.delete(customer, params={"reason": REASON}, timeout=10)
        with sqlite3.connect(tmp_path / "contacts.db") as database:
            database.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON contact"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        failed = requests.post(f"{url}/identify", json=identify, timeout=10)
        with sqlite3.connect(tmp_path / "contacts.db") as database:
            database.execute("ALTER TABLE contact RENAME TO contact_away")
        unavailable = requests.post(f"{url}/identify", json=identify, timeout=10)

    assert (failed.status_code, unavailable.status_code) == (500, 503)
    stdout_text, stderr_text = stdout_path.read_text(), stderr_path.read_text()
    assert "Traceback" in stdout_text
    assert "p***@fluxkart.com" in stderr_text
    for line in (stdout_text + stderr_text).splitlines():
        json.loads(line)
    for text in [stdout_text, stderr_text, *map(str, answers)]:
        for value in (EMAIL, PHONE, FORMATTED_PHONE, "5559876", "Marty McFly"):
            assert value not in text
