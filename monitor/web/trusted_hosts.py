"""ASGI middleware: answer only requests whose Host is trusted (against DNS rebinding).

Unlike Starlette's TrustedHostMiddleware it reads an IPv6 Host (`[::1]:8000`), and it lets
health checks and scrapes through whatever Host they send: kubelet probes and Prometheus pod
discovery address a pod by its IP, and those routes show nothing a rebinding page could use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")


def host_name(header: str) -> str:
    """The host part of a Host header, lower case, brackets and port removed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else ""
    if header.count(":") > 1:  # a bare IPv6 address (no port can be told apart)
        return header
    return header.partition(":")[0]


def is_allowed(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.strip().lower().strip("[]")
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    """400 `{"detail": "invalid Host header"}` unless the Host matches; `exempt_paths` pass."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str],
        exempt_paths: Iterable[str] = EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self.allowed = tuple(allowed_hosts)
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] != "http" or path in self.exempt:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                header = value.decode("latin-1")
                break
        if is_allowed(host_name(header), self.allowed):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "invalid Host header"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
