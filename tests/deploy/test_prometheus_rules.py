"""prometheus/: the config, the alert rules and their unit tests, checked with promtool 2.42."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import KNOWN_METRICS, PROMETHEUS_DIR, load_yaml, run_tool
from tests.deploy.grafana_queries import metric_names

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"

EXPECTED_ALERTS = {
    "PoolSaturated",
    "PoolPendingRequests",
    "PoolCheckoutTimeouts",
    "ConnectionLeaked",
    "IdleInTransactionTooLong",
    "ServerConnectionsNearLimit",
    "DatabaseDown",
    "ProbeFailing",
    "ProbeStale",
    "PgBouncerClientsWaiting",
    "PgBouncerMaxWaitHigh",
}
SEVERITIES = {"warning", "critical"}


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
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "pool-monitor"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["app:8000"]


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


def test_pgbouncer_alerts_select_the_job_and_link_their_runbook_section() -> None:
    runbooks = (PROMETHEUS_DIR.parent / "docs" / "runbooks.md").read_text(encoding="utf-8")
    anchors = {
        "#" + line.lstrip("#").strip().lower().replace(" ", "-")
        for line in runbooks.splitlines()
        if line.startswith("#")
    }
    rules = [rule for rule in alert_rules() if rule["alert"].startswith("PgBouncer")]
    assert rules
    for rule in rules:
        assert 'job="pool-monitor"' in rule["expr"], rule["alert"]
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert path == "docs/runbooks.md" and f"#{anchor}" in anchors, rule["alert"]
