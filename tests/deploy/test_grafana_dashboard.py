"""grafana/: the provisioned datasource and dashboard provider, and the dashboard JSON."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    BASE_METRICS,
    DASHBOARD,
    DATASOURCE_FILE,
    KNOWN_METRICS,
    POOL_METRICS,
    POSTGRES_EXPORTER_METRICS,
    PROMETHEUS_DIR,
    PROVIDER_FILE,
    base_metric,
    load_yaml,
    run_tool,
)
from tests.deploy.grafana_queries import (
    iter_panels,
    label_values_query,
    metric_names,
    panel_queries,
    substitute,
)

DASHBOARD_UID = "pool-monitor-connection-health"
SCHEMA_VERSION = 41  # what the pinned Grafana 12.1 writes; it migrates older versions on load
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text"}
ANGULAR_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel"}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Dashboard variable -> the label it lists.
QUERY_VARIABLES = {
    "job": "job",
    "instance": "instance",
    "pool_name": "db_client_connection_pool_name",
    "pg_job": "job",
    "pg_instance": "instance",
}
# Grafana units of per-second rates.
RATE_UNITS = {"ops", "cps", "reqps"}
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(iter_panels(dashboard["panels"]))


@pytest.fixture(scope="module")
def targets(panels: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def test_classic_model_for_file_provisioning(dashboard: dict[str, Any]) -> None:
    # "Export for sharing externally" output only resolves in the import UI.
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in text
    assert dashboard["uid"] == DASHBOARD_UID and len(DASHBOARD_UID) <= 40
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert dashboard.get("id") is None, "a fixed id clashes with the database's ids"


def test_panel_ids_are_unique(panels: list[dict[str, Any]]) -> None:
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlap(panels: list[dict[str, Any]]) -> None:
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than 24 columns"
        boxes.append((panel["title"], grid))
    for (a, ga), (b, gb) in combinations(boxes, 2):
        apart = (
            ga["x"] + ga["w"] <= gb["x"]
            or gb["x"] + gb["w"] <= ga["x"]
            or ga["y"] + ga["h"] <= gb["y"]
            or gb["y"] + gb["h"] <= ga["y"]
        )
        assert apart, f"{a!r} overlaps {b!r}"


def test_panel_types_are_current(panels: list[dict[str, Any]]) -> None:
    types = {panel["type"] for panel in panels}
    assert not types & ANGULAR_TYPES, "AngularJS panels no longer render"
    assert types <= PANEL_TYPES
    assert "row" in types, "panels are grouped in rows"


def test_datasources_resolve_to_the_provisioned_one(
    panels: list[dict[str, Any]], variables: dict[str, dict[str, Any]]
) -> None:
    (provisioned,) = load_yaml(DATASOURCE_FILE)["datasources"]
    assert provisioned["type"] == "prometheus" and provisioned["uid"] == "prometheus"
    assert provisioned["url"] == "http://prometheus:9090"
    scrape_interval = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert provisioned["jsonData"]["timeInterval"] == scrape_interval
    # The variable defaults to the pinned uid; panels all go through the variable.
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    assert datasource["current"]["value"] == provisioned["uid"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]


def test_query_variables(variables: dict[str, dict[str, Any]]) -> None:
    for name, label_name in QUERY_VARIABLES.items():
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name
        assert var["datasource"] == DATASOURCE_REF, name
        selector, label = label_values_query(var["query"])
        assert label == label_name
        assert selector is not None and metric_names(selector) <= KNOWN_METRICS, name
    # Each variable narrows down by the ones before it.
    assert 'job=~"$job"' in variables["instance"]["query"]
    assert 'instance=~"$instance"' in variables["pool_name"]["query"]
    assert 'job=~"$pg_job"' in variables["pg_instance"]["query"]
    assert "pg_up" in variables["pg_job"]["query"]  # postgres_exporter's own series


def test_every_selector_is_filtered_by_the_variables(
    targets: list[tuple[str, dict[str, Any]]],
) -> None:
    assert targets
    for title, target in targets:
        expr = target["expr"]
        selectors = SELECTOR.findall(expr)
        # A bare metric without {...} would escape the filters.
        assert {name for name, _ in selectors} == metric_names(expr), title
        for name, matchers in selectors:
            if name in POSTGRES_EXPORTER_METRICS:  # postgres_exporter's job and instance
                assert 'job=~"$pg_job"' in matchers, title
                assert 'instance=~"$pg_instance"' in matchers, title
                continue
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, title
            if base_metric(name) in POOL_METRICS:
                assert 'db_client_connection_pool_name=~"$pool_name"' in matchers, title


def test_ranges_use_rate_interval(targets: list[tuple[str, dict[str, Any]]]) -> None:
    ranged = 0
    for title, target in targets:
        for window in re.findall(r"\[([^\]]*)\]", target["expr"]):
            assert window == "$__rate_interval", f"{title}: [{window}]"
            ranged += 1
    assert ranged, "expected rate()/increase() panels"


def test_dashboard_covers_every_exposed_metric(
    targets: list[tuple[str, dict[str, Any]]],
) -> None:
    used = {base_metric(n) for _, t in targets for n in metric_names(t["expr"])}
    known = BASE_METRICS | POSTGRES_EXPORTER_METRICS
    assert used <= known, f"unknown metrics: {sorted(used - known)}"
    assert BASE_METRICS - used == set(), "metrics without a panel"
    assert {"pg_stat_activity_count", "pg_settings_max_connections"} <= used  # cluster-wide


def test_counters_are_rates_per_second(panels: list[dict[str, Any]]) -> None:
    for panel in panels:
        exprs = [t["expr"] for t in panel.get("targets", [])]
        assert not any("increase(" in e for e in exprs), f"{panel['title']}: increase()"
        counters = [n for e in exprs for n in metric_names(e) if n.endswith(("_total", "_bucket"))]
        for expr in exprs:
            for name in metric_names(expr):
                if name.endswith("_total"):
                    assert f"rate({name}" in expr, f"{panel['title']}: {name} not as rate()"
        only_rates = all(any(n.endswith("_total") for n in metric_names(e)) for e in exprs)
        if counters and only_rates:
            assert panel["fieldConfig"]["defaults"]["unit"] in RATE_UNITS, panel["title"]


def test_pool_worst_case_is_set_against_max_connections(panels: list[dict[str, Any]]) -> None:
    (headroom,) = (p for p in panels if p["title"] == "max_connections headroom")
    exprs = " ".join(t["expr"] for t in headroom["targets"])
    assert "sum(db_client_connection_max{" in exprs and "pg_settings_max_connections{" in exprs


def test_panel_queries_substitute_everything() -> None:
    queries = panel_queries(DASHBOARD)
    assert len(queries) >= 20
    for title, expr in queries:
        assert "$" not in expr and "[[" not in expr, f"{title}: {expr}"
        assert metric_names(expr) <= KNOWN_METRICS, title


def test_panel_queries_parse(promtool: str, tmp_path: Path) -> None:
    # promtool has Prometheus's own parser: recording rules are the way to feed it queries.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(panel_queries(DASHBOARD))
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_provider_path_is_the_compose_mount(compose: dict[str, Any]) -> None:
    (provider,) = load_yaml(PROVIDER_FILE)["providers"]
    assert provider["type"] == "file"
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job=~"$job"}', 'up{job=~".+"}'),
        ('x{instance=~"${instance}", p=~"${pool_name:regex}"}', 'x{instance=~".+", p=~".+"}'),
        ("rate(x[$__rate_interval]) + rate(y[$__interval])", "rate(x[1m]) + rate(y[15s])"),
        ('increase(x{job=~"[[job]]"}[$__range])', 'increase(x{job=~".+"}[1h])'),
        ('x{job=~"$__all"} + x{job=~"$jobs"}', 'x{job=~".+"} + x{job=~"$jobs"}'),
    ],
)
def test_substitute(expr: str, expected: str) -> None:
    assert substitute(expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (le) (rate(a_bucket{x="y"}[5m]))', {"a_bucket"}),
        ("a / on (instance) group_left (job) b offset 5m", {"a", "b"}),
        ('time() - max(c{state="idle in transaction"}) > bool 60', {"c"}),
        ("histogram_quantile(0.95, sum(rate(d[1m])) by (le)) and e", {"d", "e"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_server_facts_are_never_summed_over_instances(
    targets: list[tuple[str, dict[str, Any]]],
) -> None:
    # Every instance reports the same pool_monitor_server_* numbers: max, never sum.
    summed = re.compile(r"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(\s*pool_monitor_server_")
    for title, target in targets:
        assert not summed.search(target["expr"]), title
