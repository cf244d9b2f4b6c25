"""The support console at /console/: a page and its assets, all served from
console/ in this repository (docs/support.md). The page asks for
the API key and calls the API from the browser; it holds no secret itself."""

from pathlib import Path

from flask import Blueprint, Response, redirect
from werkzeug.wrappers import Response as Redirect

FOLDER = Path(__file__).resolve().parent / "console"

# Scripts and styles from this origin only, no inline script or style, and
# requests to this origin only: nothing is loaded from elsewhere.
POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

console = Blueprint(
    "console", __name__, static_folder=FOLDER, static_url_path="/console"
)


@console.get("/console")
def to_page() -> Redirect:
    return redirect("/console/", code=308)


@console.get("/console/")
def page() -> Response:
    return console.send_static_file("index.html")


@console.after_request
def protect(response: Response) -> Response:
    """The page's policy and headers on the page and on each of its assets."""
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response
