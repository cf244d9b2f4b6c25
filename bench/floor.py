"""The floor: what Flask under the same gunicorn settings does with no database.

POST /identify parses the JSON body and answers a small JSON object, so the
same wrk scripts drive it and the service alike.
"""

from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.post("/identify")
def identify() -> dict[str, Any]:
    body = request.get_json()
    return {"contact": {"received": len(body)}}
