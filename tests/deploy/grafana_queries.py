"""The PromQL of the bundled Grafana dashboard, made runnable against a plain Prometheus.

Grafana expands its template variables and macros before it sends a query; Prometheus alone
does not know them. `panel_queries` does the same expansion with values that match every
series (`.+`) and fixed intervals, so the queries can be parsed by promtool or sent to a
real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MACROS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
DEFAULT_VARIABLES = frozenset({"job", "instance", "pool_name", "pg_job", "pg_instance"})
MATCH_ALL = ".+"

# $var, ${var}, ${var:format} and the legacy [[var]] / [[var:format]].
_REFERENCE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def substitute(expr: str, variables: Iterable[str] = DEFAULT_VARIABLES) -> str:
    """`expr` with Grafana macros and the given variables replaced; unknown `$x` stay as is."""
    names = set(variables) | {"__all"}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in MACROS:
            return MACROS[name]
        if name in names:
            return MATCH_ALL
        return match.group(0)

    return _REFERENCE.sub(replace, expr)


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_variables(dashboard: dict[str, Any]) -> set[str]:
    """Names of the variables whose values end up inside queries (not the datasource one)."""
    templating = dashboard.get("templating", {}).get("list", [])
    return {var["name"] for var in templating if var.get("type") != "datasource"}


def panel_queries(dashboard_path: str | Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the dashboard, variables substituted."""
    dashboard = json.loads(Path(dashboard_path).read_text(encoding="utf-8"))
    variables = DEFAULT_VARIABLES | dashboard_variables(dashboard)
    return [
        (panel.get("title", ""), substitute(target["expr"], variables))
        for panel in iter_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexical scan, enough for our queries)."""
    # Drop what may contain identifiers that are not metrics: strings, label matchers,
    # range durations and grouping label lists; functions are identifiers before "(".
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


# The selector is everything before the last comma (matchers may contain commas).
_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,)?\s*(?P<label>\w+)\s*\)\s*$"
)


def label_values_query(query: str) -> tuple[str | None, str]:
    """(series selector or None, label) of a `label_values(...)` variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match.group("selector"), match.group("label")
