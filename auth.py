"""API keys: who may call the service (docs/operating.md: "API keys")."""

import hmac

from flask import current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

# Health checks, the API description, the docs page and the support console's
# page and assets stay reachable, so that load balancers and people can find
# out how to authenticate (the console asks for the key, then sends it).
PUBLIC_ENDPOINTS = frozenset(
    {
        "service.health",
        "service.openapi",
        "swagger_ui.show",
        "console.to_page",
        "console.page",
        "console.static",
    }
)


def require_api_key() -> None:
    """Refuse the request unless no keys are configured, it is public, its
    path and method match no route (routing answers 404, 405 or a redirect),
    or it carries `Authorization: Bearer <key>` with one of the keys.

    Raises Unauthorized (401, with `WWW-Authenticate: Bearer`)."""
    keys: list[str] = current_app.config["API_KEYS"]
    if not keys or request.url_rule is None or request.endpoint in PUBLIC_ENDPOINTS:
        return
    if not key_is_valid(sent_key(), keys):
        raise Unauthorized(
            "Send a valid API key as 'Authorization: Bearer <key>'.",
            www_authenticate=WWWAuthenticate("bearer"),
        )


def sent_key() -> str:
    credentials = request.authorization
    if credentials is None or credentials.type != "bearer":
        return ""
    return credentials.token or ""


def key_is_valid(sent: str, keys: list[str]) -> bool:
    """True when `sent` is one of `keys`. Every key is compared, each in
    constant time, so the answer's timing tells nothing about the keys."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(sent.encode(), key.encode())
    return valid
