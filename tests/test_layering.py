"""The facade and its readers do not know each other: only the wiring places name `PoolMonitor`.

Metrics, web and background work take the sources of `monitor.sources`; a module that imported
the facade (even for a type hint) would tie it back to the one class that composes them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import monitor
from tests.conftest import python_in_fresh_process

PACKAGE = Path(monitor.__file__).resolve().parent
FACADE = "monitor.pool_monitor"
# Where a `PoolMonitor` is built or re-exported: the facade itself, the package's lazy export,
# the app factory, and the pytest plugin's watch (a passive monitor on every new engine).
WIRING = {"pool_monitor.py", "__init__.py", "app.py", "suite_watch.py"}
# What the sources module may import: the pure state, the pool holder, the group; no reader.
SOURCES_MAY_IMPORT = ("monitor.state", "monitor.watched_pool", "monitor.process_group")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        yield relative, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _package_of(relative: str) -> list[str]:
    """The dotted package a module lives in, for resolving its relative imports."""
    return ["monitor", *relative.split("/")[:-1]]


def _imported(relative: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every module name imported anywhere in `tree` (top level, functions, TYPE_CHECKING),
    relative imports resolved, `from x import y` also as `x.y` (y may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = _package_of(relative)[: len(_package_of(relative)) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
        ):
            yield node.lineno, node.args[0].value


def _names_facade(relative: str, tree: ast.Module) -> list[str]:
    lines = {
        line
        for line, name in _imported(relative, tree)
        if name in (FACADE, "monitor.PoolMonitor") or name.startswith(FACADE + ".")
    }
    found = [f"{relative}:{line}: imports the facade" for line in sorted(lines)]
    # `monitor.PoolMonitor` through the package, or a name bound some other way.
    found += [
        f"{relative}:{node.lineno}: uses PoolMonitor"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Name) and node.id == "PoolMonitor")
        or (isinstance(node, ast.Attribute) and node.attr == "PoolMonitor")
    ]
    return found


def test_only_the_wiring_places_import_the_facade() -> None:
    offenders = [
        line
        for relative, tree in _modules()
        if relative not in WIRING
        for line in _names_facade(relative, tree)
    ]
    assert not offenders, "type against monitor.sources, not the facade:\n" + "\n".join(offenders)


def test_the_sources_import_no_reader() -> None:
    tree = ast.parse((PACKAGE / "sources.py").read_text(encoding="utf-8"))
    ours = [name for _, name in _imported("sources.py", tree) if name.startswith("monitor")]
    assert ours, "the sources name the state they hand out"
    strays = [name for name in ours if not name.startswith(SOURCES_MAY_IMPORT)]
    assert strays == []


def test_the_check_sees_every_way_of_naming_the_facade() -> None:
    code = (
        "from monitor.pool_monitor import PoolMonitor\n"
        "from .. import pool_monitor\n"
        "import monitor.pool_monitor as facade\n"
        "def later():\n"
        "    from monitor import PoolMonitor as P\n"
        "    importlib.import_module('monitor.pool_monitor')\n"
        "    return monitor.PoolMonitor\n"
    )
    found = _names_facade("web/example.py", ast.parse(code))
    lines = {int(entry.split(":")[1]) for entry in found}
    assert lines == {1, 2, 3, 5, 6, 7}, found


def test_importing_the_facade_starts_nothing() -> None:
    # Composing its readers at module level must not start them, nor load the async bridge
    # (greenlet, which a sync-only install lacks) or FastAPI (needed only to install).
    code = (
        "import sys, threading, monitor.pool_monitor;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "heavy = {'greenlet', 'sqlalchemy.ext.asyncio', 'fastapi', 'starlette'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    python_in_fresh_process(code)
