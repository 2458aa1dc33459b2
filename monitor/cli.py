"""The `pool-monitor` command: serve the app, run the demo, generate load, self-test a deployment."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.handler(args)
    except ValidationError as exc:
        print(f"pool-monitor: invalid configuration:\n{_settings_errors(exc)}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pool-monitor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text, handler in (
        ("serve", "serve the app with the monitor attached", _serve),
        ("demo", "serve with demo leak routes and a gentle background load", _demo),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        command.add_argument("--port", type=int, default=8000)
        command.set_defaults(handler=handler)
    return parser


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
    app = create_app(settings)
    base = f"http://{_display_host(args.host)}:{args.port}"
    print(
        f"pool-monitor: app on {base}/ , dashboard {base}/monitor/ , metrics {base}/metrics",
        flush=True,
    )
    # One worker: the monitor's state and probe live in this process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="info")
    return 0


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
