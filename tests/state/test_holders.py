"""Holders as shown to readers: the request, or the thread/task, named only when shown."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

from monitor.state.holders import RequestScope, describe


def test_a_request_is_described_by_method_route_and_id() -> None:
    holder = describe(RequestScope.named("GET", "/products/7", "req-1"), threading.get_ident())
    assert (holder.kind, holder.route, holder.request_id) == ("request", "GET /products/7", "req-1")


def test_a_thread_ident_is_named_while_the_thread_lives() -> None:
    # The checkout path keeps only the ident (one C call); the name is looked up when shown.
    seen: list[str] = []
    release = threading.Event()

    def hold() -> None:
        seen.append(describe(None, threading.get_ident()).route)
        release.wait(5)

    worker = threading.Thread(target=hold, name="report-worker")
    worker.start()
    ident = worker.ident
    assert ident is not None
    for _ in range(500):
        if seen:
            break
        threading.Event().wait(0.01)
    assert seen == ["report-worker"]
    assert describe(None, ident).route == "report-worker"
    release.set()
    worker.join(5)
    assert describe(None, ident).route == f"thread {ident} (ended)"


def test_an_asyncio_task_is_named_by_its_task_name() -> None:
    async def main() -> str:
        task = asyncio.current_task()
        return describe(None, task).route

    async def run() -> str:
        return await asyncio.create_task(main(), name="nightly-report")

    assert asyncio.run(run()) == "nightly-report"


def test_a_released_request_keeps_only_what_a_holder_shows() -> None:
    class Route:
        path = "/products/{product_id}"

    scope = {
        "type": "http", "method": "GET", "path": "/products/7", "route": Route(),
        "headers": [(b"x-request-id", b"req-7")], "app": object(), "state": {"big": [1] * 100},
    }  # fmt: skip
    request = RequestScope(scope, serial=3)
    request.release_scope()
    # No dict or header list left: only the app's own route object is a container it still holds.
    assert request.scope is None
    held = [o for o in gc.get_referents(request) if gc.is_tracked(o) and o is not RequestScope]
    assert held == [scope["route"]]
    holder = describe(request, None)
    assert (holder.route, holder.request_id) == ("GET /products/{product_id}", "req-7")


def test_an_unsafe_client_request_id_is_replaced_by_a_serial_one() -> None:
    request = RequestScope(
        {"method": "GET", "path": "/", "headers": [(b"x-request-id", b"<x>")]}, 9
    )
    assert request.request_id.endswith("-9") and "<" not in request.request_id


def test_requests_without_a_client_id_are_numbered_apart_and_keep_their_id() -> None:
    first = RequestScope({"method": "GET", "path": "/", "headers": []})
    second = RequestScope({"method": "GET", "path": "/", "headers": [(b"x-request-id", b"")]})
    first_id = first.request_id
    first.release_scope()
    assert first.request_id == first_id
    assert second.request_id != first_id
    assert first_id.startswith(f"{os.getpid():x}-")


def test_malformed_headers_end_the_request_quietly_with_a_numbered_id() -> None:
    request = RequestScope({"method": "GET", "path": "/", "headers": [(b"x-request-id",), "?"]})
    request.release_scope()
    assert request.request_id.startswith(f"{os.getpid():x}-")
