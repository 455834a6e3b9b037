"""Who may ask: the Host allow-list, the bearer token, and the headers that keep a browser
from misusing the page.

- Host: a server bound to loopback answers only requests addressed to a loopback name
  (`localhost`, `127.0.0.1`, `[::1]`, plus `--allowed-host` names), 421 otherwise. A web page
  elsewhere that points its own name at 127.0.0.1 (DNS rebinding) is refused this way.
- Token: with one set, /predict and /info need `Authorization: Bearer TOKEN` (compared in
  constant time), 401 otherwise. /health, the page and its icon stay open.
- Every answer carries `X-Content-Type-Options: nosniff`; the page also a Content-Security-
  Policy allowing only its own inline script and style (by hash), requests to this server,
  and no framing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
PROTECTED = frozenset({"/predict", "/info"})


def is_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header, lowercase and without its port (`[::1]:80` -> `[::1]`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def page_policy(page: str) -> str:
    """The Content-Security-Policy of the page: its inline <script> and <style> by hash."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
        return " ".join(f"'sha256-{d}'" for d in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class Guard:
    """ASGI middleware: the Host check and the token before the application, the security
    headers on every answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Iterable[str] | None,
        page_policy: str,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.page_policy = page_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.hosts is not None:
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.hosts:
                await _refuse(send, 421, f"this server does not answer for the host {name[:80]!r}"
                              "; add it with --allowed-host", {})  # fmt: skip
                return
        if self.token is not None and scope["path"] in PROTECTED:
            given = headers.get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential, self.token):
                what = "a wrong token" if given else "no token"
                message = f"{what}: send Authorization: Bearer TOKEN (the server's token)"
                await _refuse(send, 401, message, {"WWW-Authenticate": "Bearer"})
                return
        page = scope["path"] == "/"

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff")]
                if page:
                    extra += [
                        (b"content-security-policy", self.page_policy.encode()),
                        (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    ]  # fmt: skip
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, secured)


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    """A JSON refusal sent before the application sees the request (its body left unread)."""
    body = json.dumps({"error": message, "status": status}).encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
              (b"x-content-type-options", b"nosniff"), (b"connection", b"close"),
              *((k.lower().encode(), v.encode()) for k, v in headers.items())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})
