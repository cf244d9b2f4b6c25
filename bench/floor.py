"""The floor: what Flask under the same gunicorn settings does with no database.

POST /identify, POST /customers/lookup and POST /customers/<id>/detach parse
the JSON body and answer a small JSON object, and GET /customers/<id>/history
and DELETE /customers/<id> answer one, so that the same wrk scripts drive it
and the service alike.
"""

from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.post("/identify")
@app.post("/customers/lookup")
def identify() -> dict[str, Any]:
    body = request.get_json()
    return {"contact": {"received": len(body)}}


@app.post("/customers/<int:contact_id>/detach")
def detach(contact_id: int) -> dict[str, Any]:
    body = request.get_json()
    return {"contacts": [{"primaryContactId": contact_id, "received": len(body)}]}


@app.get("/customers/<int:contact_id>/history")
def history(contact_id: int) -> dict[str, Any]:
    return {"events": [], "next": contact_id}


@app.delete("/customers/<int:contact_id>")
def erase(contact_id: int) -> dict[str, Any]:
    return {"erasedContactIds": [contact_id], "suppressed": 0}
