"""The `pool-monitor` command: serve the app, run the demo, generate load, self-test a deployment."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

MAX_WORKERS = 64


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The probe and the leak sweep run every few seconds: their scheduler's INFO lines are noise.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        result: int = args.handler(args)
    except ValidationError as exc:
        print(f"pool-monitor: invalid configuration:\n{_settings_errors(exc)}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    from monitor.demo.load import MAX_CONCURRENCY, MAX_DURATION_S

    parser = argparse.ArgumentParser(prog="pool-monitor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, handler in (
        ("serve", "serve the app with the monitor attached", _serve),
        ("demo", "serve with demo leak routes and a gentle background load", _demo),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        command.add_argument("--port", type=int, default=8000)
        command.add_argument(
            "--workers",
            type=_bounded(int, 0, MAX_WORKERS),
            default=1,
            help="worker processes (default 1); the monitor covers all of them",
        )
        command.set_defaults(handler=handler)

    load = commands.add_parser(
        "load", help="send a CRUD load to a running app, then print a latency summary"
    )
    load.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    load.add_argument(
        "--duration", type=_bounded(float, 0, MAX_DURATION_S), default=10.0, help="seconds"
    )
    load.add_argument(
        "--concurrency", type=_bounded(int, 0, MAX_CONCURRENCY), default=8, help="threads"
    )
    load.add_argument("--seed", type=int, default=None, help="make the request mix repeatable")
    load.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    load.set_defaults(handler=_load)
    selftest = commands.add_parser(
        "selftest", help="trigger each demo scenario on a running app and check the monitor sees it"
    )
    selftest.add_argument("--url", default="http://127.0.0.1:8000")
    selftest.add_argument("--token", default=None, help="dashboard token, if the app requires one")
    selftest.set_defaults(handler=_selftest)
    return parser


def _bounded(kind: type[float] | type[int], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in (low, high]."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be above {low:g} and at most {high:g}")
        return value

    return parse


def _load(args: argparse.Namespace) -> int:
    from monitor.demo.load import LoadTargetUnreachable, format_summary, run_load

    try:
        summary = run_load(
            args.url,
            args.duration,
            int(args.concurrency),
            seed=args.seed,
            # A progress line rewritten with \r only makes sense on a terminal.
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except LoadTargetUnreachable as exc:
        print(f"pool-monitor load: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pool-monitor load: {exc}", file=sys.stderr)
        return 2
    # HTTP errors are part of the result (an exhausted pool answers 503): shown, exit 0.
    print(format_summary(summary))
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from monitor.selftest import run_selftest

    return run_selftest(args.url, args.token)


def _serve(args: argparse.Namespace) -> int:
    return _run_server(args, demo=False)


def _demo(args: argparse.Namespace) -> int:
    return _run_server(args, demo=True)


def _run_server(args: argparse.Namespace, *, demo: bool) -> int:
    import uvicorn

    from monitor.app import create_app
    from monitor.settings import Settings

    overrides = {"demo_routes": True, "demo_background_load": True} if demo else {}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.demo_routes and not _is_loopback(args.host) and not settings.demo_allow_remote:
        print(
            "pool-monitor: demo routes break the app on purpose; refusing to serve them on "
            f"{args.host}. Bind 127.0.0.1 or set MONITOR_DEMO_ALLOW_REMOTE=true.",
            file=sys.stderr,
        )
        return 2
    workers = int(getattr(args, "workers", 1))
    base = f"http://{_display_host(args.host)}:{args.port}"
    if workers > 1:
        return _run_workers(args, settings, base, workers, overrides)
    app = create_app(settings)
    print(
        f"pool-monitor: app on {base}/ , dashboard {base}/monitor/ , metrics {base}/metrics",
        flush=True,
    )
    stop_load = _background_load_when_up(base) if settings.demo_background_load else None
    try:
        uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="info")
    finally:
        if stop_load is not None:
            stop_load()
    return 0


def _run_workers(
    args: argparse.Namespace,
    settings: Any,
    base: str,
    workers: int,
    overrides: dict[str, bool],
) -> int:
    """Several uvicorn workers, each building the app from the environment (the factory)."""
    import os

    import uvicorn

    from monitor.embedded import EmbeddedPostgres

    embedded = None
    if not settings.database_url:
        # One embedded server for all workers, started here: each worker would start its own.
        embedded = EmbeddedPostgres(settings.embedded_data_dir)
        os.environ["DATABASE_URL"] = embedded.start().render_as_string(hide_password=False)
    for name, value in overrides.items():
        os.environ[f"MONITOR_{name.upper()}"] = "true" if value else "false"
    print(
        f"pool-monitor: app on {base}/ ({workers} workers), dashboard {base}/monitor/ , "
        f"metrics {base}/metrics",
        flush=True,
    )
    stop_load = _background_load_when_up(base) if settings.demo_background_load else None
    try:
        uvicorn.run(
            "monitor.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=workers,
            log_level="info",
        )
    finally:
        if stop_load is not None:
            stop_load()
        if embedded is not None:
            embedded.close()
    return 0


def _background_load_when_up(base: str) -> Callable[[], None]:
    """Start the gentle demo load once /healthz answers (in a thread); returns its stop."""
    import httpx

    from monitor.demo.load import start_background_load

    cancelled = threading.Event()
    lock = threading.Lock()
    started: list[Callable[[], None]] = []

    def wait_then_start() -> None:
        # The embedded PostgreSQL may run initdb first, hence the generous bound.
        deadline = time.monotonic() + 120
        while not cancelled.wait(0.25) and time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                continue
        else:
            return
        with lock:
            if not cancelled.is_set():
                started.append(start_background_load(base))
                print("pool-monitor: background load running (~3 requests/s)", flush=True)

    thread = threading.Thread(target=wait_then_start, name="demo-load-starter", daemon=True)
    thread.start()

    def stop() -> None:
        cancelled.set()
        thread.join(timeout=2)
        with lock:
            for stop_load in started:
                stop_load()

    return stop


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _settings_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {field}: {error['msg']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
