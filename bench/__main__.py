"""The benchmarks' one entry point: `python -m bench [scenario ...] [--instrument NAME] [--quick]`.

Each scenario answers one question, measures monitored and bare side by side in one run, and
ends with a verdict against its goal: met, missed, or not resolved (the run's own noise spans
the goal). Without a scenario, the default set runs (`make bench`); `--list` names them all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench import pool, probe, request, scrape, served
from bench.interval import Verdict, print_verdict

Run = Callable[[argparse.Namespace], list[Verdict]]


@dataclass(frozen=True, slots=True)
class Scenario:
    question: str
    run: Run
    instruments: Mapping[str, Run] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # executables it runs
    default: bool = True


SCENARIOS: dict[str, Scenario] = {
    "checkout": Scenario(
        "What does the monitor add to a checkout + checkin? (goal <= 1.30x)",
        lambda args: pool.checkout(*((5, 500) if args.quick else (21, 4_000))),
        {
            "callgrind": lambda args: pool.checkout_instructions(
                *((200, 1_200) if args.quick else (1_000, 6_000))
            )
        },
        needs=(),
    ),
    "statement": Scenario(
        "What does it add to checkout + SELECT 1 + checkin? (goal <= 1.05x)",
        lambda args: pool.statement(rounds=20 if args.quick else 315),
    ),
    "pytest-plugin": Scenario(
        "What does `pytest --pool-monitor` add to a suite's wall time? (goal <= 1.05x)",
        lambda args: (
            pool.pytest_plugin_on_sqlalchemy(
                *((2, pool.SQLALCHEMY_QUICK) if args.quick else (5, pool.SQLALCHEMY_ENGINE_TESTS))
            )
            if args.suite == "sqlalchemy"
            else pool.pytest_plugin(*((2, 60) if args.quick else (5, 300)))
        ),
    ),
    "request": Scenario(
        "What does it cost a served request? (throughput >= 0.97x, p99 +<= 1 ms)",
        lambda args: request.run(request.QUICK if args.quick else request.FULL),
        {
            "callgrind": lambda args: request.instructions(
                *((50, 150) if args.quick else (200, 1_000))
            ),
            "bytecodes": lambda args: request.bytecodes(10 if args.quick else 100),
        },
        needs=("wrk",),
    ),
    "scrape": Scenario(
        "What does a /metrics scrape of a large model cost? (median <= 20 ms)",
        lambda args: scrape.scrape(rounds=20 if args.quick else 200),
    ),
    "workers": Scenario(
        "Several workers as one monitor: /metrics over 8 workers x 200 connections (median "
        "<= 30 ms), and what publishing costs a worker (<= 1% of a core)?",
        lambda args: scrape.workers(rounds=10 if args.quick else 100),
    ),
    "poll": Scenario(
        "What does an open dashboard cost the app (<= 1% of a core), also with many server "
        "sessions (--sessions 400)?",
        lambda args: (
            scrape.poll_with_sessions(args.sessions, polls=5 if args.quick else 20)
            if args.sessions
            else scrape.poll(*((2, 10) if args.quick else (5, 40)))
        ),
    ),
    "probe": Scenario(
        "What does one probe cost with 300 idle sessions (median <= 10 ms), or through "
        "PgBouncer, connecting per probe (--through pgbouncer: median <= 50 ms)?",
        lambda args: (
            probe.through_pgbouncer(rounds=15 if args.quick else 60)
            if args.through == "pgbouncer"
            else probe.probe(rounds=15 if args.quick else 60)
        ),
        needs=(),
    ),
    "soak": Scenario(
        "Does the app stay flat for minutes under load, polling and leaks? (RSS +<= 5 MB)",
        lambda args: [
            served.soak(args.minutes or (1.0 if args.quick else 5.0), 10.0 if args.quick else 30.0)
        ],
        default=False,
    ),
}
INSTRUMENTS = sorted({name for s in SCENARIOS.values() for name in s.instruments})


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="scenario",
                        help=f"one of {', '.join(SCENARIOS)} (default: all but soak)")  # fmt: skip
    parser.add_argument("--instrument", choices=INSTRUMENTS,
                        help="count instead of timing, where the scenario offers it")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short settings: proves it runs")
    parser.add_argument("--minutes", type=float, help="soak: how long")
    parser.add_argument("--sessions", type=int, help="poll: idle server sessions to list")
    parser.add_argument("--through", choices=["pgbouncer"], help="probe: through PgBouncer")
    parser.add_argument(
        "--suite",
        choices=["generated", "sqlalchemy"],
        default="generated",
        help="pytest-plugin: a generated suite, or SQLAlchemy's engine tests",
    )
    parser.add_argument("--list", action="store_true", help="name the scenarios and stop")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; one of {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            instruments = (
                f" [--instrument {'|'.join(scenario.instruments)}]" if scenario.instruments else ""
            )
            print(f"{name:10} {scenario.question}{instruments}")
        return 0
    names = args.scenarios or [name for name, s in SCENARIOS.items() if s.default]
    results: list[Verdict] = []
    for name in names:
        scenario = SCENARIOS[name]
        run = scenario.run
        if args.instrument:
            if args.instrument not in scenario.instruments:
                if args.scenarios:
                    raise SystemExit(f"{name} offers no --instrument {args.instrument}")
                continue  # the default set with an instrument: the scenarios that offer it
            run = scenario.instruments[args.instrument]
        needs = scenario.needs + (("valgrind",) if args.instrument == "callgrind" else ())
        missing = [tool for tool in needs if shutil.which(tool) is None]
        print(f"\n== {name}{' --instrument ' + args.instrument if args.instrument else ''}: "
              f"{scenario.question}", flush=True)  # fmt: skip
        if missing:
            print(f"skipped: {', '.join(missing)} not installed")
            results.append(
                Verdict(name, f"skipped ({', '.join(missing)} missing)", "", "not resolved")
            )
            continue
        for result in run(args):
            print_verdict(result)
            results.append(result)
    print("\n| scenario | figure | goal | verdict |\n|---|---|---|---|")
    for result in results:
        print(f"| {result.scenario} | {result.figure} | {result.goal} | {result.verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
