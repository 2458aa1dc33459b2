"""pytest plugin: `pytest --pool-monitor[=report|warn|fail]` names the test or fixture that leaked
a connection. Off unless asked for; when off it registers an option, an ini key and a marker,
and imports nothing else.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from monitor.state.records import PoolSnapshot
    from monitor.suite_watch import Finding, Owner, SuiteWatch

MODES = ("report", "warn", "fail")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("", "false", "no", "off", "0")
ALLOW_MARKER = "pool_monitor_allow"


class PoolMonitorWarning(UserWarning):
    """A test or fixture left a connection behind (`--pool-monitor=warn`)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pool-monitor", "connection leaks per test (pool-monitor)")
    group.addoption(
        "--pool-monitor",
        nargs="?",
        const="report",
        default=None,
        dest="pool_monitor",
        metavar="MODE",
        help="watch every SQLAlchemy engine for connections a test or fixture leaves behind: "
        "report (summary at the end; the default), warn (a warning per test), fail (the test fails)",
    )
    group.addoption(
        "--pool-monitor-report",
        default=None,
        dest="pool_monitor_report",
        metavar="PATH",
        help="also write the findings as JSON to PATH",
    )
    parser.addini("pool_monitor", "report, warn or fail (true means report): as --pool-monitor")
    parser.addini(
        "pool_monitor_allow_fixtures",
        "fixtures allowed to hold connections (idle in transaction included) across tests",
        type="args",
        default=[],
    )


def mode_of(config: pytest.Config, option: str | None) -> str | None:
    """The mode asked for on the command line, else in the ini file; None when off."""
    raw = option if option is not None else str(config.getini("pool_monitor") or "")
    value = raw.strip().lower()
    if value in _FALSE:
        return None
    if value in _TRUE:
        return "report"
    if value not in MODES:
        raise pytest.UsageError(
            f"--pool-monitor / pool_monitor: expected one of {MODES}, got {raw!r}"
        )
    return value


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Start watching before conftest files import the app: engines made at import count too."""
    option = getattr(early_config.known_args_namespace, "pool_monitor", None)
    mode = mode_of(early_config, option)
    if mode is not None:
        _session_plugin(early_config, mode)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ALLOW_MARKER}(reason): pool-monitor reports this test's connection findings as "
        "allowed instead of warning or failing",
    )
    mode = mode_of(config, config.getoption("pool_monitor"))
    if mode is not None:
        _session_plugin(config, mode)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(_SessionPlugin.name)
    if isinstance(plugin, _SessionPlugin):
        plugin.watch.uninstall()
        config.pluginmanager.unregister(plugin)


@pytest.fixture
def pool_monitor(request: pytest.FixtureRequest) -> PoolMonitorFixture:
    """Snapshots of every pool the run watches, and this test's findings so far."""
    plugin = request.config.pluginmanager.get_plugin(_SessionPlugin.name)
    if not isinstance(plugin, _SessionPlugin):
        pytest.fail("the pool_monitor fixture needs `pytest --pool-monitor`", pytrace=False)
    return PoolMonitorFixture(plugin)


class PoolMonitorFixture:
    """What a test can ask the plugin: the pools now, and what was found so far."""

    def __init__(self, plugin: _SessionPlugin) -> None:
        self._plugin = plugin

    def snapshots(self) -> list[PoolSnapshot]:
        return self._plugin.watch.snapshots()

    def checked_out(self) -> int:
        """Connections checked out right now, over every watched pool."""
        return sum(snapshot.checked_out for snapshot in self.snapshots())

    @property
    def findings(self) -> list[Finding]:
        return list(self._plugin.watch.findings)


def _session_plugin(config: pytest.Config, mode: str) -> None:
    if config.pluginmanager.get_plugin(_SessionPlugin.name) is not None:
        return
    from monitor.suite_watch import SuiteWatch

    watch = SuiteWatch()
    watch.install()
    config.pluginmanager.register(_SessionPlugin(config, watch, mode), _SessionPlugin.name)


class _SessionPlugin:
    """The hooks of a watched run: registered only when the plugin is on."""

    name = "pool-monitor-session"

    def __init__(self, config: pytest.Config, watch: SuiteWatch, mode: str) -> None:
        self.config = config
        self.watch = watch
        self.mode = mode
        self._fixtures: dict[int, Owner] = {}
        self._teardown_findings: list[Finding] = []
        self._allowed_fixtures = set(config.getini("pool_monitor_allow_fixtures"))

    # ---- phases ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        from monitor.suite_watch import SESSION_OWNER

        self._record(self.watch.phase_ended(SESSION_OWNER), None)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            owner = _fixture_owner(fixturedef)
            self._fixtures[id(fixturedef)] = owner
            self._record(self.watch.phase_ended(owner), None)

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        owner = self._fixtures.pop(id(fixturedef), None)
        if owner is None:
            return
        findings = self.watch.fixture_finished(owner)
        if owner.name in self._allowed_fixtures:
            findings = [_allow(f, "pool_monitor_allow_fixtures") for f in findings]
        self._record(findings, None)
        self._teardown_findings += findings

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        from monitor.suite_watch import Owner

        self._record(self.watch.phase_ended(_last_phase(item)), None)
        try:
            yield
        finally:
            line = item.location[1]
            where = f"{item.path}:{line + 1}" if line is not None else str(item.path)
            owner = Owner("test", item.nodeid, "function", where)
            findings = self._record(self.watch.test_ended(owner), item)
            self._act(item, "call", findings)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        self._teardown_findings = []
        try:
            yield
        finally:
            findings, self._teardown_findings = self._teardown_findings, []
            self._act(item, "teardown", findings)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._record(self.watch.session_finished(), None)
        path = self.config.getoption("pool_monitor_report")
        if path:
            Path(path).write_text(
                json.dumps(
                    {
                        "mode": self.mode,
                        "findings": [f.to_dict() for f in self.watch.findings],
                        "counts": dict(Counter(f.kind for f in self._counted())),
                    },
                    indent=2,
                )
            )
        if self.mode == "fail" and self._counted() and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from monitor.suite_report import summary_lines

        lines = summary_lines(self.watch.findings)
        terminalreporter.section("pool-monitor", sep="=", bold=True)
        for line in lines:
            terminalreporter.line(line)

    # ---- outcomes --------------------------------------------------------------------------

    def _record(self, findings: list[Finding], item: pytest.Item | None) -> list[Finding]:
        if item is not None:
            marker = item.get_closest_marker(ALLOW_MARKER)
            if marker is not None:
                reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
                findings = [_allow(finding, str(reason) or "marked") for finding in findings]
        self.watch.findings.extend(findings)
        return findings

    def _counted(self) -> list[Finding]:
        return [f for f in self.watch.findings if f.allowed_reason is None]

    def _act(self, item: pytest.Item, when: str, findings: list[Finding]) -> None:
        if not findings:
            return
        live = [finding for finding in findings if finding.allowed_reason is None]
        if self.mode != "fail" or not live:  # a failure's message says it all already
            text = "\n".join(line for finding in findings for line in finding.lines())
            item.add_report_section(when, "pool-monitor", text)
        if not live:
            return
        if self.mode == "warn":
            for finding in live:
                warnings.warn(PoolMonitorWarning("\n".join(finding.lines())), stacklevel=1)
        elif self.mode == "fail":
            owners = sorted({finding.owner.describe() for finding in live})
            body = "\n".join(line for finding in live for line in finding.lines())
            # No traceback: the plugin's frames say nothing about the leak.
            pytest.fail(
                f"pool-monitor: {', '.join(owners)} left connections behind\n{body}", pytrace=False
            )


def _allow(finding: Finding, reason: str) -> Finding:
    from dataclasses import replace

    return replace(finding, allowed_reason=reason)


def _fixture_owner(fixturedef: pytest.FixtureDef[Any]) -> Owner:
    from monitor.suite_watch import Owner

    func = fixturedef.func
    code = getattr(func, "__code__", None)
    location = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return Owner("fixture", fixturedef.argname, fixturedef.scope, location)


def _last_phase(item: pytest.Item) -> Owner:
    """Checkouts first seen at a test's start were taken by its set-up outside any fixture."""
    from monitor.suite_watch import Owner

    return Owner("test", f"{item.nodeid} (set-up)", "function", "")
