"""Monitor HTTP routes: the dashboard, its HTMX partials and the JSON API; they only read snapshots."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from monitor.sources import DashboardSource
from monitor.state.view import MonitorView
from monitor.web import views
from monitor.web.auth import authorize
from monitor.web.history import GaugeHistory
from monitor.web.install import METRICS_PATH_ATTR
from monitor.web.render_context import RenderContext
from monitor.web.templating import asset_dir, get_templates

log = logging.getLogger(__name__)

# Tags come with `include_router` (install.py): the host app chooses them.
router = APIRouter(prefix="/monitor")

HTMX_VERSION = "2.0.11"
HTMX_CDN = f"https://cdn.jsdelivr.net/npm/htmx.org@{HTMX_VERSION}/dist/htmx.min.js"
# sha384 of npm htmx.org@2.0.11 dist/htmx.min.js; a test checks the vendored copy matches it.
HTMX_SRI = "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg"
# No trigger filter: htmx evaluates filters as code, which a Content-Security-Policy without
# 'unsafe-eval' refuses. static/dashboard.js skips the polls of a hidden tab instead.
POLL_TRIGGER = "every 2s"
# A poll that gets no answer within this is given up (and shown as such): htmx waits for ever
# otherwise, and drops every later poll while one is in flight.
POLL_TIMEOUT_MS = 10_000
HISTORY_ATTR = "monitor_gauge_history"

# Dashboard layout: (panel, title, width in grid columns of 12). What is wrong now comes first
# (timeouts, leaks, holders); a panel with nothing to say collapses to one line (app.css).
LAYOUT: tuple[tuple[str, str, int], ...] = (
    ("timeouts", "Pool timeouts", 12),
    ("leaks", "Suspected leaks", 12),
    ("held", "Checked-out connections", 12),
    ("gauges", "Pool", 12),
    ("slow", "Slow statements", 12),
    ("blocking", "Blocked and blocking sessions", 12),
    ("orphans", "Orphans and phantoms", 12),
    ("probe", "Server probe", 4),
    ("rules", "Connection guide rules", 12),
    ("server", "Server sessions and capacity", 12),
    ("pgbouncer", "PgBouncer", 12),
)
_NO_STORE = {"Cache-Control": "no-store"}
_history_lock = threading.Lock()


def _source(request: Request) -> DashboardSource | None:
    """The monitor the app serves (set by install or the lifespan; None until then)."""
    source: DashboardSource | None = getattr(request.app.state, "pool_monitor", None)
    return source


def mount_static(app: FastAPI) -> None:
    """Serve `static/` (htmx, CSS) at /monitor/static; public, it holds no data."""
    app.mount("/monitor/static", StaticFiles(directory=asset_dir("static")), name="monitor_static")


# ---- rendering -------------------------------------------------------------------------------


def _history(app: Any, pool_name: str) -> GaugeHistory:
    """The gauge history of one pool (each pool keeps its own)."""
    with _history_lock:
        histories: dict[str, GaugeHistory] | None = getattr(app.state, HISTORY_ATTR, None)
        if histories is None:
            histories = {}
            setattr(app.state, HISTORY_ATTR, histories)
        return histories.setdefault(pool_name, GaugeHistory())


def _context(request: Request, view: MonitorView) -> RenderContext:
    """Record this render's gauges (at most once a second) and return what builders need."""
    history = _history(request.app, view.pool.pool_name)
    stats = view.pool_stats
    history.record(
        used=stats.checked_out,
        idle=stats.checked_in,
        overflow=stats.overflow,
        pending=view.pool.pending_requests,
        wait_counts=view.pool.wait_time.cumulative_counts,
    )
    return RenderContext(
        cwd=os.getcwd(),
        samples=history.samples(),
        samples_now=history.now(),
        window_s=history.window_s,
    )


def _page_globals(request: Request) -> dict[str, Any]:
    root = request.scope.get("root_path", "")
    base = root + "/monitor"
    monitor = _source(request)
    pools = [p.name for p in monitor.pools] if monitor is not None else []
    selected = request.query_params.get("pool")
    return {
        # The pool switcher: shown with several pools; the poll asks for the pool on show.
        "pools": pools,
        "pool": selected if selected in pools else (pools[0] if pools else None),
        "metrics_path": getattr(request.app.state, METRICS_PATH_ATTR, "/metrics"),
        "root": root,
        "base": base,
        "static": base + "/static",
        "htmx_cdn": HTMX_CDN,
        "htmx_sri": HTMX_SRI,
        "htmx_local": f"{base}/static/vendor/htmx-{HTMX_VERSION}.min.js",
        "poll_trigger": POLL_TRIGGER,
        "poll_timeout_ms": POLL_TIMEOUT_MS,
        "poll_target": poll_target,
        "csp_nonce": getattr(request.state, "csp_nonce", ""),
    }


def _monitor_view(request: Request) -> tuple[MonitorView | None, str | None]:
    """The monitor's view, or None and the reason to show instead (never an exception)."""
    monitor = _source(request)
    if monitor is None:
        return None, "The monitor is not running in this process (no pool_monitor on the app)."
    try:
        view = monitor.view(pool=request.query_params.get("pool"))
    except KeyError:
        return None, "No pool of that name: pick one of the pools listed above."
    except Exception as exc:
        log.exception("monitor view failed")
        return None, f"The monitor could not read its state ({type(exc).__name__})."
    return view, None


def _build(name: str, view: MonitorView, ctx: RenderContext) -> tuple[object, str | None]:
    try:
        return views.build_panel(name, view, ctx), None
    except Exception as exc:
        log.exception("dashboard panel %s failed", name)
        return None, _failed("panel", exc)


def _build_every_panel(request: Request) -> tuple[dict[str, object], dict[str, str]]:
    """Every panel's model (the status included) from one view, and each failed one's problem."""
    view, problem = _monitor_view(request)
    if view is None:
        return {}, dict.fromkeys(views.PANEL_NAMES, problem or "")
    ctx = _context(request, view)
    models: dict[str, object] = {}
    problems: dict[str, str] = {}
    for name in views.PANEL_NAMES:
        model, panel_problem = _build(name, view, ctx)
        if panel_problem is None:
            models[name] = model
        else:
            problems[name] = panel_problem
    return models, problems


def _failed(what: str, exc: Exception) -> str:
    return f"This {what} failed to render ({type(exc).__name__}); see the server log."


def _render(request: Request, name: str, context: dict[str, Any]) -> Response:
    """Render a template; a template error becomes the 'unavailable' fragment, still HTTP 200."""
    templates = get_templates()
    try:
        return templates.TemplateResponse(request, name, context, headers=_NO_STORE)
    except Exception as exc:
        log.exception("dashboard template %s failed", name)
        return templates.TemplateResponse(
            request,
            "partials/_unavailable.html",
            {"problem": _failed("view", exc)},
            headers=_NO_STORE,
        )


def _fragment(name: str, model: object, problem: str | None) -> str:
    """One panel's HTML, or why it is missing; a template failure spoils this panel only."""
    env = get_templates().env
    if problem is None:
        try:
            return env.get_template(f"partials/_{name}.html").render(p=model)
        except Exception as exc:
            log.exception("dashboard template of panel %s failed", name)
            problem = _failed("panel", exc)
    return env.get_template("partials/_unavailable.html").render(problem=problem)


def poll_target(name: str) -> str:
    """The id of the element on the dashboard that holds panel `name`."""
    return f"body-{name}"


@router.get("/", include_in_schema=False)
def dashboard(request: Request) -> Response:
    """The whole dashboard, every panel rendered server-side so it reads without JavaScript."""
    denied = authorize(request)
    if denied is not None:
        return denied
    models, problems = _build_every_panel(request)
    context = {
        **_page_globals(request),
        "layout": LAYOUT,
        "panels": models,
        "problems": problems,
        "demo": views.build_demo(getattr(request.app.state, "demo_scenarios", None)),
    }
    return _render(request, "dashboard.html", context)


@router.get("/partials", include_in_schema=False)
def every_partial(request: Request) -> Response:
    """Every panel at once as out-of-band swaps: what the dashboard polls. One request per poll,
    not one per panel: eleven requests cost the app about seven times the CPU of this one
    (`python -m bench poll`), nearly all of it per-request HTTP work."""
    denied = authorize(request)
    if denied is not None:
        return denied
    models, problems = _build_every_panel(request)
    body = "\n".join(
        f'<div id="{poll_target(name)}" hx-swap-oob="innerHTML">'
        f"{_fragment(name, models.get(name), problems.get(name))}</div>"
        for name in views.PANEL_NAMES
    )
    return HTMLResponse(body, headers=_NO_STORE)


@router.get("/partials/{panel}", include_in_schema=False)
def partial(request: Request, panel: str) -> Response:
    """One panel's fragment (the combined poll's parts, one at a time); always 200, a degraded
    rendering on trouble."""
    denied = authorize(request)
    if denied is not None:
        return denied
    if panel not in views.BUILDERS:
        return JSONResponse({"detail": f"unknown panel {panel!r}"}, status_code=404)
    view, problem = _monitor_view(request)
    model: object = None
    if view is not None:
        model, problem = _build(panel, view, _context(request, view))
    return HTMLResponse(_fragment(panel, model, problem), headers=_NO_STORE)


@router.get("/api/snapshot")
def snapshot(request: Request) -> Any:
    """The whole monitor snapshot as JSON: pool, held connections joined to the server, rules."""
    denied = authorize(request)
    if denied is not None:
        return denied
    monitor = _source(request)
    if monitor is None:
        return JSONResponse({"detail": "monitor not started"}, status_code=503)
    return monitor.snapshot()
