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
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from monitor.state.records import PoolSnapshot
    from monitor.suite_watch import Finding, Owner, SuiteWatch

MODES = ("report", "warn", "fail")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("", "false", "no", "off", "0")
ALLOW_MARKER = "pool_monitor_allow"
# The plugin object of a watched run, by this name: `pluginmanager.has_plugin(SESSION_PLUGIN)`.
SESSION_PLUGIN = "pool-monitor-session"
# The key of an xdist worker's findings in the output it sends the controller.
_WORKER_OUTPUT = "pool_monitor_findings"


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
        f"{ALLOW_MARKER}(reason, kinds=None): pool-monitor reports the connection findings "
        "made while this test runs (of the given kinds, else all) as allowed instead of warning "
        "or failing",
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

    def unwatch(self, engine: Engine | AsyncEngine) -> None:
        """Leave `engine` alone for the rest of the run: for a test of its own instrumentation
        (the plugin's monitor would be one more on its pool)."""
        self._plugin.watch.unwatch(engine)


def _session_plugin(config: pytest.Config, mode: str) -> None:
    if config.pluginmanager.get_plugin(_SessionPlugin.name) is not None:
        return
    from monitor.suite_watch import SuiteWatch

    watch = SuiteWatch()
    watch.install()
    config.pluginmanager.register(_SessionPlugin(config, watch, mode), _SessionPlugin.name)


class _SessionPlugin:
    """The hooks of a watched run: registered only when the plugin is on."""

    name = SESSION_PLUGIN

    def __init__(self, config: pytest.Config, watch: SuiteWatch, mode: str) -> None:
        self.config = config
        self.watch = watch
        self.mode = mode
        self._fixtures: dict[int, Owner] = {}
        self._teardown_findings: list[Finding] = []
        self._allowed_fixtures = set(config.getini("pool_monitor_allow_fixtures"))
        self._item: pytest.Item | None = None  # the test running now: its markers apply
        self._from_workers: list[Finding] = []  # the xdist controller's: what workers found

    # ---- phases ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        from monitor.suite_watch import SESSION_OWNER

        self._record(self.watch.phase_ended(SESSION_OWNER))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        self._item = item
        try:
            return (yield)
        finally:
            self._item = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            _allowances(item)
            return
        except ValueError as exc:
            message = str(exc)
        pytest.fail(message, pytrace=False)  # outside the except: no chained error below it

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            owner = _fixture_owner(fixturedef)
            self._fixtures[id(fixturedef)] = owner
            self._record(self.watch.phase_ended(owner))

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        owner = self._fixtures.pop(id(fixturedef), None)
        if owner is None:
            return
        findings = self.watch.fixture_finished(owner)
        if owner.name in self._allowed_fixtures:
            findings = [_allow(f, "pool_monitor_allow_fixtures") for f in findings]
        self._teardown_findings += self._record(findings)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        from monitor.suite_watch import Owner

        self._record(self.watch.phase_ended(_last_phase(item)))
        raised = False
        try:
            yield
        except BaseException:
            raised = True
            raise
        finally:
            line = item.location[1]
            where = f"{item.path}:{line + 1}" if line is not None else str(item.path)
            owner = Owner("test", item.nodeid, "function", where)
            findings = self._record(self.watch.test_ended(owner))
            self._act(item, "call", findings, raised)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        self._teardown_findings = []
        raised = False
        try:
            yield
        except BaseException:
            raised = True
            raise
        finally:
            findings, self._teardown_findings = self._teardown_findings, []
            self._act(item, "teardown", findings, raised)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        """xdist controller: a worker finished; its findings join the run's (a crashed one has
        none to give)."""
        from monitor.state.codec import from_dict
        from monitor.suite_watch import Finding

        output = getattr(node, "workeroutput", None) or {}
        self._from_workers += [from_dict(Finding, data) for data in output.get(_WORKER_OUTPUT, [])]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._record(self.watch.session_finished())
        worker_output = getattr(self.config, "workeroutput", None)
        if worker_output is not None:  # an xdist worker: the controller reports for the run
            from monitor.state.codec import to_plain

            worker_output[_WORKER_OUTPUT] = [to_plain(f) for f in self.watch.findings]
            return
        path = self.config.getoption("pool_monitor_report")
        if path:
            Path(path).write_text(
                json.dumps(
                    {
                        "mode": self.mode,
                        "findings": [f.to_dict() for f in self._findings()],
                        "counts": dict(Counter(f.kind for f in self._counted())),
                    },
                    indent=2,
                )
            )
        if self.mode == "fail" and self._counted() and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from monitor.suite_report import summary_lines

        lines = summary_lines(self._findings())
        terminalreporter.section("pool-monitor", sep="=", bold=True)
        for line in lines:
            terminalreporter.line(line)

    # ---- outcomes --------------------------------------------------------------------------

    def _record(self, findings: list[Finding]) -> list[Finding]:
        """Keep `findings`, allowed where a marker of the test running now says so."""
        if findings and self._item is not None:
            try:
                allowances = _allowances(self._item)
            except ValueError:  # said once already, at the test's set-up
                allowances = []
            findings = [_allowed(finding, allowances) for finding in findings]
        self.watch.findings.extend(findings)
        return findings

    def _findings(self) -> list[Finding]:
        return self.watch.findings + self._from_workers

    def _counted(self) -> list[Finding]:
        return [f for f in self._findings() if f.allowed_reason is None]

    def _act(self, item: pytest.Item, when: str, findings: list[Finding], raised: bool) -> None:
        """Report, warn or fail; a phase that raised already keeps its own error (the findings
        go beside it), or the plugin's message would hide the test's."""
        if not findings:
            return
        live = [finding for finding in findings if finding.allowed_reason is None]
        # In fail mode the failure's message says it all, unless the phase had failed already.
        if self.mode != "fail" or not live or raised:
            text = "\n".join(line for finding in findings for line in finding.lines())
            item.add_report_section(when, "pool-monitor", text)
        if not live or raised:
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


def _allowances(item: pytest.Item) -> list[tuple[frozenset[str] | None, str]]:
    """(kinds or None for all, reason) of each allow marker of `item`, nearest first."""
    from monitor.suite_watch import KINDS

    allowances: list[tuple[frozenset[str] | None, str]] = []
    for marker in item.iter_markers(ALLOW_MARKER):
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        kinds = marker.kwargs.get("kinds")
        if kinds is not None:
            kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
            if unknown := sorted(kinds - set(KINDS)):
                raise ValueError(
                    f"{ALLOW_MARKER}: unknown kind(s) {', '.join(unknown)}; "
                    f"expected some of {', '.join(KINDS)}"
                )
        allowances.append((kinds, str(reason) or "marked"))
    return allowances


def _allowed(finding: Finding, allowances: list[tuple[frozenset[str] | None, str]]) -> Finding:
    if finding.allowed_reason is not None:
        return finding
    for kinds, reason in allowances:
        if kinds is None or finding.kind in kinds:
            return _allow(finding, reason)
    return finding


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
