"""`pool-monitor selftest`: trigger every demo scenario against a running app and check that the
monitor reports each one within a deadline. Talks to the app over HTTP only, like a user would."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

DEMO_HEADERS = {"HX-Request": "true"}


@dataclass(frozen=True, slots=True)
class Check:
    scenario: str
    detected: bool
    seconds: float
    detail: str


class SelfTest:
    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )

    def close(self) -> None:
        self._client.close()

    def snapshot(self) -> dict[str, Any]:
        response = self._client.get("/monitor/api/snapshot")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def run(self) -> list[Check]:
        first = self.snapshot()
        leak_threshold = float(first["pool"]["leak_threshold_s"])
        slow_s = float(first["pool"]["slow_query_s"])
        pool_timeout = float(first["pool_stats"]["timeout_s"] or 30)
        # The probe interval is not in the snapshot; generous deadlines cover the default 5 s.
        server_deadline = 15.0
        checks = [
            self._scenario(
                "leak",
                "/demo/leak",
                {"hold_s": leak_threshold + server_deadline},
                lambda s: any(_route(leak) == "POST /demo/leak" for leak in s["pool"]["leaks"]),
                leak_threshold + server_deadline,
            ),
            self._counter("gc-leak", "/demo/gc-leak", {}, "gc_reclaimed", 5.0),
            self._scenario(
                "idle-in-transaction",
                "/demo/idle-in-transaction",
                {"hold_s": server_deadline + 5},
                lambda s: any(
                    (h["server"] or {}).get("state", "").startswith("idle in transaction")
                    and _route(h["connection"]) == "POST /demo/idle-in-transaction"
                    for h in s["held"]
                ),
                server_deadline,
            ),
            self._counter(
                "slow-query",
                "/demo/slow-query",
                {"seconds": round(min(30.0, slow_s * 1.5 + 0.05), 3)},
                "slow_queries",
                5.0,
            ),
            self._counter(
                "two-sessions", "/demo/two-sessions", {}, "multi_connection_requests", 5.0
            ),
            self._exhaust(pool_timeout),
        ]
        self._client.post("/demo/release", headers=DEMO_HEADERS)
        released = _wait(lambda: self.snapshot()["pool"]["checked_out"] == 0, 10.0)
        checks.append(Check("release", released[0], released[1], "checked out back to 0"))
        return checks

    def _scenario(
        self,
        name: str,
        path: str,
        params: dict[str, float],
        seen: Callable[[dict[str, Any]], bool],
        deadline_s: float,
    ) -> Check:
        response = self._client.post(path, params=params, headers=DEMO_HEADERS)
        if response.status_code >= 400:
            return Check(name, False, 0.0, f"HTTP {response.status_code}: {response.text[:120]}")
        detected, seconds = _wait(lambda: seen(self.snapshot()), deadline_s)
        self._client.post("/demo/release", headers=DEMO_HEADERS)
        return Check(
            name, detected, seconds, "" if detected else f"not seen within {deadline_s:g} s"
        )

    def _counter(
        self, name: str, path: str, params: dict[str, float], counter: str, deadline_s: float
    ) -> Check:
        before = self.snapshot()["pool"]["counters"][counter]
        return self._scenario(
            name, path, params,
            lambda s: s["pool"]["counters"][counter] > before, deadline_s,
        )  # fmt: skip

    def _exhaust(self, pool_timeout_s: float) -> Check:
        before = self.snapshot()["pool"]["counters"]["timeouts"]
        response = self._client.post(
            "/demo/exhaust", params={"hold_s": pool_timeout_s + 10}, headers=DEMO_HEADERS
        )
        if response.status_code >= 400:
            return Check("exhaust", False, 0.0, f"HTTP {response.status_code}")
        starved = self._client.get("/products", timeout=pool_timeout_s + 10)
        detected, seconds = _wait(
            lambda: self.snapshot()["pool"]["counters"]["timeouts"] > before, 5.0
        )
        self._client.post("/demo/release", headers=DEMO_HEADERS)
        detail = f"next request got HTTP {starved.status_code}"
        return Check("exhaust", detected and starved.status_code == 503, seconds, detail)


def _route(record: dict[str, Any]) -> str | None:
    holder = record.get("holder")
    return holder.get("route") if isinstance(holder, dict) else None


def _wait(condition: Callable[[], bool], deadline_s: float) -> tuple[bool, float]:
    started = time.monotonic()
    while True:
        if condition():
            return True, time.monotonic() - started
        if time.monotonic() - started > deadline_s:
            return False, time.monotonic() - started
        time.sleep(0.2)


def format_checks(checks: list[Check]) -> str:
    lines = [f"{'scenario':22} {'detected':9} {'seconds':>8}  detail"]
    for check in checks:
        lines.append(
            f"{check.scenario:22} {'yes' if check.detected else 'NO':9} {check.seconds:8.1f}  {check.detail}"
        )
    return "\n".join(lines)


def run_selftest(base_url: str, token: str | None = None) -> int:
    selftest = SelfTest(base_url, token=token)
    try:
        try:
            checks = selftest.run()
        except httpx.HTTPError as exc:
            print(f"pool-monitor selftest: cannot talk to {base_url}: {exc}")
            return 1
    finally:
        selftest.close()
    print(format_checks(checks))
    missed = [c.scenario for c in checks if not c.detected]
    print("all scenarios detected" if not missed else f"missed: {', '.join(missed)}")
    return 1 if missed else 0
