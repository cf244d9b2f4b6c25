"""The floor: what Flask under the same gunicorn settings does with no database.

POST /identify and POST /customers/lookup parse the JSON body and answer a
small JSON object, and GET /customers/<id>/history answers one, so that the
same wrk scripts drive it and the service alike.
"""

from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.post("/identify")
@app.post("/customers/lookup")
def identify() -> dict[str, Any]:
    body = request.get_json()
    return {"contact": {"received": len(body)}}


@app.get("/customers/<int:contact_id>/history")
def history(contact_id: int) -> dict[str, Any]:
    return {"events": [], "next": contact_id}
