"""Response helpers for showing untrusted mail: sandboxed HTML frames and safe downloads.

Why: an email's HTML is written by whoever sent it. It is served from a route of
its own with a Content-Security-Policy that forbids every script (and the CSP
``sandbox`` directive, so even opened directly it runs nothing), and shown in an
``<iframe sandbox>``; attachments are always downloads, never rendered on our origin.
Used by the dev inbox and by the template previews. :func:`same_origin` is the one
Origin rule of every route that refuses cross-site posts (the form, the dev inbox).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from quart import Request, Response

__all__ = ["FRAME_CSP", "PAGE_CSP", "download", "framed_html", "harden_html", "same_origin", "secure_page"]

FRAME_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; font-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
    "sandbox allow-popups allow-popups-to-escape-sandbox"
)
# Our own pages need no script at all; they frame only ourselves and are framed by nobody.
PAGE_CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
IFRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"


def framed_html(html: str) -> Response:
    """The HTML of a message or preview, for an iframe: no script, no remote loads, no referrer."""
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = FRAME_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"  # shown in our own pages' iframes only
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def secure_page(response: Response) -> Response:
    """One of our own pages: no script, never framed (clickjacking), no referrer to other sites."""
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


async def harden_html(response: Response) -> Response:
    """``after_request`` for the whole app: every HTML answer without a policy of its own gets ours."""
    if response.mimetype == "text/html" and "Content-Security-Policy" not in response.headers:
        secure_page(response)
    return response


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")


def download(data: bytes, filename: str, content_type: str) -> Response:
    """An attachment download: ``Content-Disposition: attachment`` with an RFC 6266 UTF-8 name."""
    fallback = _UNSAFE_FILENAME.sub("_", filename).strip() or "download"
    response = Response(data, content_type=content_type if "/" in content_type else "application/octet-stream")
    response.headers["Content-Disposition"] = (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
    )
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def same_origin(request: Request) -> bool:
    """Cross-site form posts are refused: the ``Origin`` (or ``Sec-Fetch-Site``) must be ours.

    The host is compared, not the scheme: behind a TLS-terminating proxy the app sees
    ``http://`` for an ``https://`` page. ``Origin: null`` (sandboxed frames, some
    redirects) is never ours. A request with neither header (curl, a test client)
    is not a browser's cross-site submission and is allowed.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == request.host.lower()
    site = request.headers.get("Sec-Fetch-Site")
    return site is None or site in ("same-origin", "none")
