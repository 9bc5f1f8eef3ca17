"""The console's defences: security headers, CSRF tokens, and where it may listen.

* Every response carries a strict Content-Security-Policy (scripts and styles only from the
  console's own files, no inline script, no remote load, no framing), ``nosniff`` and
  a ``same-origin`` referrer policy (never a referrer to another site).
* Every state-changing request (every POST) must carry the browser's CSRF token in its form,
  equal to the token in its ``SameSite=Strict`` cookie (compared in constant time), and an
  ``Origin`` of the console itself when the browser sends one.
* The console listens on loopback unless told otherwise; off loopback it serves only TLS and
  asks every browser for a client certificate issued by the party's operator CA.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bund.parties.errors import ConfigError

#: What a page may load: its own script and style files, images it embeds, its own streams.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final[Mapping[str, str]] = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer would make browsers send Origin: null
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}
CSRF_COOKIE: Final = "bund_console_csrf"
CSRF_FIELD: Final = "csrf"


class SecurityHeaders:
    """ASGI middleware that adds :data:`HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``scope``, adding the headers to its response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (k.encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k.encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def csrf_token(request: Request) -> str:
    """The browser's CSRF token: its cookie's, or a new one (set by :func:`keep_csrf`)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) != 43:  # secrets.token_urlsafe(32)
        token = getattr(request.state, "new_csrf", "") or secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def keep_csrf(request: Request, response: Response) -> Response:
    """Set the CSRF cookie on ``response`` when :func:`csrf_token` made a new token."""
    token = getattr(request.state, "new_csrf", "")
    if token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


class CsrfError(Exception):
    """A state-changing request without the browser's CSRF token, or from another origin."""


async def checked_form(request: Request) -> FormData:
    """The form of a POST, once its CSRF token and origin are checked.

    Raises:
        CsrfError: The token is missing or wrong, or the request came from another origin.
    """
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own:
        raise CsrfError(f"a request from {origin} may not change anything here")
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not isinstance(sent, str) or not cookie or not hmac.compare_digest(sent, cookie):
        raise CsrfError("the form's CSRF token is missing or stale: reload the page and try again")
    return form


@dataclass(frozen=True)
class Listen:
    """Where the console listens, and the TLS that a non-loopback address requires.

    Attributes:
        host: The address to bind.
        port: The port (0: the OS picks one).
        cert: The console's TLS certificate (PEM), for a non-loopback address.
        key: Its private key.
        client_ca: The CA whose client certificates log in: the party's operator CA.
    """

    host: str = "127.0.0.1"
    port: int = 0
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def tls(self) -> bool:
        """Whether the console serves HTTPS."""
        return self.cert is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(listen: Listen, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless allowed, and then without TLS and client certs.

    Raises:
        ConfigError: What to pass instead.
    """
    given = [p for p in (listen.cert, listen.key, listen.client_ca) if p is not None]
    if given and len(given) != 3:
        raise ConfigError("give --tls-cert, --tls-key and --client-ca together")
    if is_loopback(listen.host):
        return
    if not allow_remote:
        raise ConfigError(
            f"the console listens on loopback only; to serve it on {listen.host}, pass "
            "--allow-remote with --tls-cert, --tls-key and --client-ca (the party's operator CA)"
        )
    if not listen.tls:
        raise ConfigError(
            f"a console on {listen.host} needs TLS with client certificates: pass --tls-cert, "
            "--tls-key and --client-ca (the party's operator CA, so operator credentials log in)"
        )
    for path in given:
        if not path.is_file():
            raise ConfigError(f"{path} not found")
