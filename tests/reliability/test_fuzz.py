"""Schemathesis over the app's own OpenAPI document: no 5xx, every response matches its schema.

The `st` CLI runs as a bounded subprocess: schemathesis 4.32's pytest integration breaks on pytest 9.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from monitor.settings import Settings
from tests.conftest import require_tool, url_string
from tests.reliability.conftest import serve_app, unique_name

MAX_EXAMPLES = 25
SEED = 20240611
RUN_TIMEOUT_S = 120
# PostgreSQL text cannot hold NUL (psycopg2 raises before sending); the schemas must refuse it.
NUL = "\x00"


@dataclass(frozen=True)
class Failure:
    operation: str
    check: str
    status: int | None
    request_body: str


@pytest.fixture(scope="module")
def fuzz_base(database_url: URL) -> Iterator[str]:
    """The app (demo routes off) on a free loopback port, on a schema of its own."""
    schema = f"fz_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = database_url.update_query_dict({"options": f"-csearch_path={schema}"})
    settings = Settings(
        database_url=url_string(url),
        application_name=unique_name("pm-fuzz"),
        demo_routes=False,
        probe_interval_s=1.0,
        pool_timeout_s=5.0,
    )
    try:
        with serve_app(settings) as served:
            yield served.base
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _st() -> str:
    beside = Path(sys.executable).parent / "st"
    return str(beside) if beside.exists() else require_tool("st")


def _decode(body: Any) -> str:
    if isinstance(body, dict) and "$base64" in body:
        return base64.b64decode(body["$base64"]).decode("utf-8", "replace")
    return json.dumps(body) if body is not None else ""


def _failures(ndjson: Path) -> list[Failure]:
    """Every failed check of the run, with the request that caused it."""
    found: list[Failure] = []
    for line in ndjson.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if not event:
            continue
        recorder = event.get("recorder") or {}
        interactions = recorder.get("interactions") or {}
        for case_id, checks in (recorder.get("checks") or {}).items():
            interaction = interactions.get(case_id) or {}
            response = interaction.get("response") or {}
            body = _decode((interaction.get("request") or {}).get("body"))
            found.extend(
                Failure(
                    recorder.get("label", "?"), check["name"], response.get("status_code"), body
                )
                for check in checks
                if check.get("status") == "failure"
            )
    return found


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_api_has_no_server_error_and_matches_its_schema(fuzz_base: str, tmp_path: Path) -> None:
    operations = httpx.get(f"{fuzz_base}/openapi.json", timeout=5).json()["paths"]
    assert "/products" in operations
    assert not [path for path in operations if path.startswith("/demo")], "demo routes exposed"
    report, events = tmp_path / "report.json", tmp_path / "events.ndjson"
    run = subprocess.run(
        [
            _st(), "run", f"{fuzz_base}/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--workers", "1",
            "--request-timeout", "10",
            "--report", "json,ndjson",
            "--report-json-path", str(report),
            "--report-ndjson-path", str(events),
        ],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads(report.read_text())
    failures = _failures(events)
    print(
        f"\nfuzz: {summary['test_cases']['generated']} cases over "
        f"{summary['operations']['tested']} operations in {summary['running_time']:.1f} s; "
        f"failures {[(f.operation, f.check, f.status) for f in failures]}"
    )
    assert summary["complete"] and summary["operations"]["errored"] == 0, run.stdout[-3000:]
    assert summary["operations"]["tested"] == summary["operations"]["selected"] >= 10
    assert not summary["errors"], summary["errors"]
    assert not failures, f"{failures}\n{run.stdout[-4000:]}"
    assert run.returncode == 0, run.stdout[-3000:]


@pytest.mark.timeout(30)
def test_nul_character_in_text_is_a_422(fuzz_base: str) -> None:
    with httpx.Client(base_url=fuzz_base, timeout=10) as client:
        product = client.post("/products", json={"name": f"a{NUL}b", "price": "1.00"})
        user = client.post("/users", json={"email": "nul@example.com", "name": f"a{NUL}b"})
    assert (product.status_code, user.status_code) == (422, 422)
