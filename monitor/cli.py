"""The `pool-monitor` command: serve the app, run the demo, generate load, self-test a deployment."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from monitor.server_limits import ServerLimits
    from monitor.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The probe and the leak sweep run every few seconds: their scheduler's INFO lines are noise.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("monitor.probes.scheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        result: int = args.handler(args)
    except ValidationError as exc:
        print(_settings_errors(exc), file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    from monitor.demo.load import MAX_CONCURRENCY, MAX_DURATION_S, MAX_REQUEST_TIMEOUT_S

    parser = argparse.ArgumentParser(prog="pool-monitor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, handler, access_log in (
        ("serve", "serve the app with the monitor attached", _serve, True),
        ("demo", "serve with demo leak routes and a gentle background load", _demo, False),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        command.add_argument(
            "--port", type=_port, default=None, help="port to listen on (default: $PORT, else 8000)"
        )
        command.add_argument(
            "--access-log",
            action=argparse.BooleanOptionalAction,
            default=access_log,
            help=f"log every request (default {'on' if access_log else 'off'})",
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
    load.add_argument(
        "--timeout",
        type=_bounded(float, 0, MAX_REQUEST_TIMEOUT_S),
        default=None,
        help="seconds a request may take (default 30, or longer than the app's pool timeout)",
    )
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
            request_timeout_s=args.timeout,
        )
    except LoadTargetUnreachable as exc:
        print(f"pool-monitor load: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pool-monitor load: {exc}", file=sys.stderr)
        return 2
    # A 503 is the app's answer (an exhausted pool): shown, exit 0. A request the app did not
    # answer as expected (a client timeout, a refused connection, a 500) fails the run.
    print(format_summary(summary))
    if summary.errors:
        print(
            f"pool-monitor load: {summary.errors} request(s) failed unexpectedly",
            file=sys.stderr,
        )
        return 1
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
    from monitor.server_limits import uvicorn_options
    from monitor.settings import Settings

    port = args.port if args.port is not None else _port_from_env()
    if port is None:
        return 2
    overrides = {"demo_routes": True, "demo_background_load": True} if demo else {}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.demo_routes and not _is_loopback(args.host) and not settings.demo_allow_remote:
        print(
            "pool-monitor: demo routes break the app on purpose; refusing to serve them on "
            f"{args.host}. Bind 127.0.0.1 or set MONITOR_DEMO_ALLOW_REMOTE=true.",
            file=sys.stderr,
        )
        return 2
    # Before anything starts (the embedded database, the background load): the load would
    # otherwise hit whatever else holds the port.
    taken = _port_taken(args.host, port)
    if taken is not None:
        print(
            f"pool-monitor: cannot listen on {args.host}:{port} ({taken}). "
            "Stop what holds it, or pick another port: --port N or PORT=N.",
            file=sys.stderr,
        )
        return 2
    app = create_app(settings)
    base = f"http://{_display_host(args.host)}:{port}"
    stop_when_up = _when_up(base, demo=demo, background_load=settings.demo_background_load)
    try:
        # One worker: the monitor's state and probe live in this process.
        uvicorn.run(
            app,
            host=args.host,
            port=port,
            workers=1,
            log_level="info",
            access_log=args.access_log,
            **uvicorn_options(server_limits(settings)),
        )
    finally:
        stop_when_up()
    return 0


def startup_block(base: str, *, demo: bool) -> str:
    """What to open and try, once the app answers: the last lines of the start-up."""
    rule = "-" * 72
    lines = [
        rule,
        f"pool-monitor {'demo ' if demo else ''}is up",
        f"  dashboard   {base}/monitor/",
        f"  metrics     {base}/metrics",
        f"  app         {base}/docs (CRUD under /products and /users)",
    ]
    if demo:
        lines += [
            "  leak one    press 'Leak a session' on the dashboard, or:",
            f"              curl -X POST -H 'HX-Request: true' {base}/demo/leak",
            "  background  a gentle CRUD load (~3 requests/s) keeps the panels moving",
        ]
    lines += ["  options     --port N (or PORT=N), --access-log, --host; Ctrl-C stops", rule]
    return "\n".join(lines)


def _when_up(base: str, *, demo: bool, background_load: bool) -> Callable[[], None]:
    """Once /healthz answers (in a thread): start the demo load, print the start-up block.
    Returns its stop."""
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
            if cancelled.is_set():
                return
            if background_load:
                started.append(start_background_load(base))
                print("pool-monitor: background load running (~3 requests/s)", flush=True)
            print(startup_block(base, demo=demo), flush=True)

    thread = threading.Thread(target=wait_then_start, name="startup-block", daemon=True)
    thread.start()

    def stop() -> None:
        cancelled.set()
        thread.join(timeout=2)
        with lock:
            for stop_load in started:
                stop_load()

    return stop


def server_limits(settings: Settings) -> ServerLimits:
    """The HTTP server's limits from the settings (on by default)."""
    from monitor.server_limits import ServerLimits

    return ServerLimits(
        header_timeout_s=settings.header_timeout_s,
        keep_alive_s=settings.keep_alive_s,
        max_connections=settings.max_connections,
    )


def _allowed_range(field: str) -> str:
    from monitor.settings import Settings

    info = Settings.model_fields.get(field)
    bounds = {
        key: getattr(item, key)
        for item in (info.metadata if info else ())
        for key in ("ge", "le")
        if getattr(item, key, None) is not None
    }
    if len(bounds) != 2:
        return ""
    unit = " seconds" if field.endswith("_s") else ""
    return f" (allowed: {bounds['ge']:g} to {bounds['le']:g}{unit})"


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {value}")
    return value


def _port_from_env() -> int | None:
    raw = os.environ.get("PORT", "").strip()
    if not raw:
        return 8000
    try:
        return _port(raw)
    except argparse.ArgumentTypeError as exc:
        print(f"pool-monitor: PORT={raw!r}: {exc}", file=sys.stderr)
        return None


def _port_taken(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on, or None when it can (checked, then released)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is taken by another process"
            return exc.strerror or str(exc)
    return None


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _settings_errors(exc: ValidationError) -> str:
    """One line per refused setting, by its environment name; never the value (a URL's
    password), never a traceback."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        name = "DATABASE_URL" if field.lower() == "database_url" else f"MONITOR_{field.upper()}"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"pool-monitor: invalid {name}: {message}{_allowed_range(field)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
