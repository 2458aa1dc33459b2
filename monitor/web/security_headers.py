"""ASGI middleware: security headers on every monitor response (anti-framing, no sniffing, CSP).

The dashboard must never be framed by another site (a click in the frame would run a demo
POST); its scripts are its own, htmx from the CDN or the vendored copy, and inline scripts
carry the per-response nonce the templates read from `request.state.csp_nonce`.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CDN_ORIGIN = "https://cdn.jsdelivr.net"  # htmx; the vendored copy is the fallback
NONCE_STATE_KEY = "csp_nonce"


def content_security_policy(nonce: str) -> str:
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {CDN_ORIGIN} 'nonce-{nonce}'",
            # Inline style attributes (bar widths) and htmx's indicator styles.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


class SecurityHeaders:
    """Adds the headers to responses under `prefix` (the monitor's pages, partials and API)."""

    def __init__(self, app: ASGIApp, prefix: str = "/monitor") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if scope["type"] != "http" or not (
            path.startswith(self.prefix) or path.startswith(root + self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})[NONCE_STATE_KEY] = nonce
        headers = [
            (b"content-security-policy", content_security_policy(nonce).encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in headers if name not in present]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)
