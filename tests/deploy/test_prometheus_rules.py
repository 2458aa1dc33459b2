"""prometheus/: the config, the alert rules and their unit tests, checked with promtool 2.42,
and each alert's runbook section in docs/runbooks.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitor.web.routes import LAYOUT
from tests.deploy.conftest import (
    DASHBOARD,
    KNOWN_METRICS,
    PROMETHEUS_DIR,
    REPO,
    load_yaml,
    run_tool,
)
from tests.deploy.grafana_queries import iter_panels, metric_names

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"

EXPECTED_ALERTS = {
    "PoolMonitorDown",
    "PoolMonitorAbsent",
    "PoolSaturated",
    "PoolPendingRequests",
    "PoolCheckoutTimeouts",
    "ConnectionLeaked",
    "IdleInTransactionTooLong",
    "ServerConnectionsNearLimit",
    "PoolsCanExceedServerLimit",
    "DatabaseDown",
    "ProbeFailing",
    "ProbeStale",
    "PgBouncerClientsWaiting",
    "PgBouncerMaxWaitHigh",
}
SEVERITIES = {"warning", "critical"}
# Only these page: requests are failing, or nothing watches the app any more.
PAGING = {"PoolMonitorDown", "PoolCheckoutTimeouts", "DatabaseDown"}
RUNBOOKS = REPO / "docs" / "runbooks.md"
JOBS = {"pool-monitor", "postgres"}
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(
    "args",
    [("check", "config", CONFIG), ("check", "rules", ALERTS), ("test", "rules", ALERT_TESTS)],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(promtool: str, args: tuple[str, ...]) -> None:
    result = run_tool(promtool, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_targets_the_app() -> None:
    config = load_yaml(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == JOBS
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert targets == {"pool-monitor": ["app:8000"], "postgres": ["postgres-exporter:9187"]}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())


def test_expected_alerts_exist_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    assert set(names) == EXPECTED_ALERTS


def test_groups_stay_within_prometheus_2_42() -> None:
    # Group-level `labels` only exist in newer Prometheus; CI lints with 2.42.
    for group in load_yaml(ALERTS)["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_is_documented(rule: dict[str, Any]) -> None:
    assert "for" in rule, "every alert rides out blips with `for`"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description"):
        assert annotations.get(key, "").strip(), f"missing annotation {key}"
    text = annotations["summary"] + annotations["description"]
    assert "$labels" in text and "$value" in text, "annotations must say where and how much"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_uses_only_exposed_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, "expression selects no metric"
    assert names <= KNOWN_METRICS, f"unknown metrics: {sorted(names - KNOWN_METRICS)}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a non-firing test case"
    assert (firing | quiet) <= names, "test cases for alerts that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_selector_names_its_job(rule: dict[str, Any]) -> None:
    selectors = SELECTOR.findall(rule["expr"])
    assert {name for name, _ in selectors} == metric_names(rule["expr"]), "a bare metric name"
    for name, matchers in selectors:
        job = re.search(r'\bjob="([^"]+)"', matchers)
        assert job is not None and job.group(1) in JOBS, f"{name} without a job selector"
        assert job.group(1) == ("postgres" if name.startswith("pg_") else "pool-monitor"), name


def test_only_what_needs_a_human_now_pages() -> None:
    paging = {r["alert"] for r in alert_rules() if r["labels"]["severity"] == "critical"}
    assert paging == PAGING


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    # Sections may nest (`## PgBouncer` holding `### PgBouncerSomething`).
    parts = re.split(r"^#{2,4} (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_runbook_url_points_at_a_complete_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"].get("runbook_url", "")
    path, _, anchor = url.partition("#")
    assert path == "docs/runbooks.md" and (REPO / path).is_file(), url
    sections = _runbook_sections()
    # GitHub's anchor of a heading made of one word: the word in lower case.
    (title,) = (t for t in sections if t.lower() == anchor)
    assert title == rule["alert"]
    for part in ("**Means.**", "**Confirm.**", "**Do.**"):
        assert part in sections[title], f"{title}: no {part}"


def test_the_app_down_alert_watches_the_scrape_itself() -> None:
    (down,) = (r for r in alert_rules() if r["alert"] == "PoolMonitorDown")
    (absent,) = (r for r in alert_rules() if r["alert"] == "PoolMonitorAbsent")
    assert down["expr"].strip() == 'up{job="pool-monitor"} == 0'
    assert absent["expr"].strip() == 'absent(up{job="pool-monitor"})'


# `sum(pool_monitor_server_...)` would add up the same server fact once per instance.
SUMMED_SERVER_SERIES = re.compile(r"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(\s*pool_monitor_server_")


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_server_facts_are_never_summed_over_instances(rule: dict[str, Any]) -> None:
    assert not SUMMED_SERVER_SERIES.search(rule["expr"])


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_rules_avoid_what_prometheus_3_changed(rule: dict[str, Any]) -> None:
    # CI lints with promtool 2.42 while compose runs v3 (no v3 promtool in PyPI, npm or
    # Debian bookworm): keep to expressions that mean the same in both. v3 renamed
    # holt_winters and normalises `le`/`quantile` label values ("1" becomes "1.0").
    expr = rule["expr"]
    assert "holt_winters" not in expr
    assert not re.search(r"\b(le|quantile)\s*=~?", expr)


def test_runbooks_name_panels_that_exist() -> None:
    # "Confirm" steps point at Grafana panels, rows and lines, and at the monitor's own page
    # sections, by their quoted titles.
    panels = list(iter_panels(load_json(DASHBOARD)["panels"]))
    titles = {panel.get("title") for panel in panels}
    titles |= {t.get("legendFormat") for panel in panels for t in panel.get("targets", [])}
    titles |= {title for _, title, _ in LAYOUT}
    quoted = {
        title
        for body in _runbook_sections().values()
        for confirm in re.findall(r"\*\*Confirm\.\*\*(.*?)(?:\*\*Do\.\*\*)", body, re.DOTALL)
        for title in re.findall(r'"([^"]+)"', confirm.replace("\n", " "))
    }
    assert quoted, "no panel named"
    assert quoted - titles - {"Targets", "Configuration"} == set()  # Prometheus' own pages
