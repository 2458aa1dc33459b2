"""The bundled alert rules across a fleet, with promtool: 1, 3 and 50 instances of one app.

Conditions of the database itself fire once however many instances report them; conditions of
an instance fire for that instance only (a stale probe is never hidden by the fresh ones);
counter resets (an instance restarted) and worker restarts inside an instance (the monitor keeps
the group's counters monotonic) neither fire nor keep an alert firing. The expected counts are
read from Prometheus' own ALERTS series, so the rules' annotations need not be repeated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import PROMETHEUS_DIR, run_tool

JOB = 'job="pool-monitor"'
POOL = 'db_client_connection_pool_name="app"'


def instance(index: int) -> str:
    return f'instance="pod-{index}:8000"'


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def firing(alert: str, at: str, count: int, by_instance: str | None = None) -> dict[str, Any]:
    """Expect `count` firing alerts named `alert` at `at` (all of them on `by_instance`)."""
    selector = f'alertname="{alert}", alertstate="firing"'
    if by_instance is not None:
        selector += f", {by_instance}"
    expected = [] if count == 0 else [{"labels": "{}", "value": count}]
    return {
        "expr": f"count(ALERTS{{{selector}}})",
        "eval_time": at,
        "exp_samples": expected,
    }


def database_facts(instances: int) -> dict[str, Any]:
    """Every instance sees the database down, a long idle transaction, connections near the
    limit: one alert each, not one per instance."""
    inputs = []
    for i in range(instances):
        where = f"{JOB}, {instance(i)}"
        inputs += [
            series("pool_monitor_server_up", where, "0x40"),
            series(
                "pool_monitor_server_max_transaction_seconds",
                f'{where}, datname="app", application_name="app", state="idle in transaction"',
                "0+15x40",
            ),
            series("pool_monitor_server_connections_used_ratio", where, "0.9x40"),
        ]
    return {
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            firing("DatabaseDown", "5m", 1),
            firing("IdleInTransactionTooLong", "5m", 1),
            firing("ServerConnectionsNearLimit", "8m", 1),
        ],
    }


def instance_conditions(instances: int) -> dict[str, Any]:
    """Instance 0 holds a leak all along (its workers combined: the gauge never drops to 0)
    and its probe went stale; the others are healthy. Only instance 0 alerts."""
    inputs = []
    for i in range(instances):
        where = f"{JOB}, {instance(i)}, {POOL}"
        inputs += [
            series(
                "sqlalchemy_pool_leaked_connections",
                f'{where}, class="idle_in_transaction"',
                "1x40" if i == 0 else "0x40",
            ),
            series(
                "pool_monitor_probe_last_success_timestamp_seconds",
                f"{JOB}, {instance(i)}",
                "0x40" if i == 0 else "0+15x40",  # instance 0's last success stays at time 0
            ),
        ]
    return {
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            firing("ConnectionLeaked", "5m", 1),
            firing("ConnectionLeaked", "5m", 1, by_instance=instance(0)),
            firing("ProbeStale", "5m", 1),
            firing("ProbeStale", "5m", 1, by_instance=instance(0)),
        ],
    }


def restarts(instances: int) -> dict[str, Any]:
    """Timeouts and restarts: instance 0 has 2 timeouts at 1m, then restarts at 5m (its counters
    start again at 0); every other instance had 5 timeouts before the window and since then
    only worker restarts, which leave the group's counter where it was. Instance 0 alerts
    while its timeouts are recent, and nothing fires or sticks after."""
    inputs = []
    for i in range(instances):
        where = f"{JOB}, {instance(i)}, {POOL}"
        timeouts = "0x3 2x16 0x40" if i == 0 else "5x60"
        inputs.append(series("db_client_connection_timeouts_total", where, timeouts))
        # Checkouts at 126 per 15 s; instance 0 restarts at 5m: rate() must not jump.
        checkouts = "0+126x20 126+126x40" if i == 0 else "1000+126x60"
        inputs.append(series("sqlalchemy_pool_checkouts_total", where, checkouts))
    return {
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            firing("PoolCheckoutTimeouts", "3m", 1, by_instance=instance(0)),
            firing("PoolCheckoutTimeouts", "3m", 1),
            firing("PoolCheckoutTimeouts", "12m", 0),
            {
                # 8.4 per second and instance, in tenths (whole numbers compare exactly).
                "expr": f"round(sum(rate(sqlalchemy_pool_checkouts_total{{{JOB}}}[1m])) * 10)",
                "eval_time": "6m",
                "exp_samples": [{"labels": "{}", "value": 84 * instances}],
            },
        ],
    }


@pytest.mark.parametrize("instances", [1, 3, 50])
def test_fleet_rules(instances: int, promtool: str, tmp_path: Path) -> None:
    tests = {
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "evaluation_interval": "15s",
        "tests": [database_facts(instances), instance_conditions(instances), restarts(instances)],
    }
    path = tmp_path / "fleet_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_tool(promtool, "test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fleet_test_can_fail(promtool: str, tmp_path: Path) -> None:
    """The same checks catch rules that fire once per instance (the old DatabaseDown)."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "DatabaseDown":
                rule["expr"] = 'pool_monitor_server_up{job="pool-monitor"} == 0'
    broken = tmp_path / "alerts.yml"
    broken.write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": [str(broken)],
        "evaluation_interval": "15s",
        "tests": [database_facts(3)],
    }
    path = tmp_path / "fleet_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_tool(promtool, "test", "rules", path)
    assert result.returncode != 0 and "DatabaseDown" in result.stdout + result.stderr
