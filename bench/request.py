"""What the monitor costs a served request: the demo app with the monitor on vs off.

Three app processes share one database: monitor on, monitor off, and a second monitor-off app
(the control: what two identical apps measure against each other in the same run, the noise
floor). A CRUD read (GET /products/{id}) and a CRUD write (POST /products) are measured two ways:
- throughput: wrk loads all three apps at once, pinned to one core (wrk on the other): they
  share the core for the same seconds, so the machine's noise hits them alike. Goal: on / off
  >= 0.97.
- latency: one app at a time at a fixed rate (half of what the apps served in a warm-up, open
  loop, `bench.served.fixed_rate`). Goal: p99 on - off <= 1 ms.
A process runs a few % faster or slower than an identical one for its whole life (hash seed,
start order), so the apps are started afresh for each generation, with that generation's hash
seed and start order, and each median comes with a 95% interval from resampling whole
generations (`bench.interval`) and the verdict it allows.
Instruments (`--instrument`): `callgrind` counts instructions per request of the whole app
process (monitor on / off, MANY - FEW requests); `bytecodes` counts Python opcodes per request
on the threads that serve requests, by module.
"""

from __future__ import annotations

import collections
import itertools
import os
import statistics
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.interval import Verdict, judge, judge_count
from bench.served import (
    DATABASE_URL,
    PIN,
    READ,
    WRITE,
    WRITE_BODY,
    Latency,
    Result,
    at_fixed_rate,
    crud_cases,
    free_port,
    served_instructions,
    start_app,
    stop_app,
    write_script,
    wrk,
    wrk_together,
)

RATIO_GOAL = 0.97  # throughput, monitor on / off
# The throughput goal's 3% as counted work per request: on / off <= 1.03.
COUNT_GOAL = 1.03
P99_GOAL_MS = 1.0  # p99 latency, monitor on - off
LOAD = 0.5  # the fixed rate, as a share of what the apps served in their warm-up
APPS = ("on", "off", "control")
START_ORDERS = list(itertools.permutations(APPS))


@dataclass(frozen=True, slots=True)
class Plan:
    """How long a run is: generations of fresh apps x rounds per case and way, seconds each."""

    generations: int = 6
    rounds: int = 3
    seconds: float = 5.0


FULL, QUICK = Plan(), Plan(generations=2, rounds=1, seconds=2.0)


def start_order(generation: int) -> tuple[str, ...]:
    """Every permutation in turn, so no app keeps the first place (it runs ~3% slower)."""
    return START_ORDERS[generation % len(START_ORDERS)]


def run_generation(
    generation: int, plan: Plan, script: Path
) -> tuple[dict[str, dict[str, list[Result]]], dict[str, dict[str, list[Latency]]]]:
    """Start the three apps afresh; per case, rounds of one app at a time at a fixed rate (each
    app first in turn), then rounds of all three at once under wrk; stop them."""
    enabled = {"on": True, "off": False, "control": False}
    ports = {name: free_port() for name in APPS}
    apps = {
        name: start_app(enabled[name], ports[name], hash_seed=generation + 1)
        for name in start_order(generation)
    }
    pids = {name: app.pid for name, app in apps.items()}
    throughput: dict[str, dict[str, list[Result]]] = {}
    latency: dict[str, dict[str, list[Latency]]] = {}
    try:
        for case, path in crud_cases(f"http://127.0.0.1:{ports['off']}").items():
            urls = {name: f"http://127.0.0.1:{ports[name]}{path}" for name in APPS}
            # Warm-up, not counted (pools filled, lazy imports done); it also sets the rate.
            served = [wrk(urls[name], case, script, pids[name], seconds=2)[0] for name in APPS]
            rate = LOAD * statistics.median(served)
            latency[case] = {name: [] for name in APPS}
            for round_index in range(plan.rounds):
                shift = (round_index + generation) % len(APPS)
                for name in APPS[shift:] + APPS[:shift]:
                    latency[case][name].append(
                        at_fixed_rate(urls[name], case, rate, pids[name], plan.seconds)
                    )
            throughput[case] = {name: [] for name in APPS}
            for _ in range(plan.rounds):
                for name, result in wrk_together(urls, case, script, pids, plan.seconds).items():
                    throughput[case][name].append(result)
    finally:
        for process in apps.values():
            stop_app(process)
    return throughput, latency


def run(plan: Plan) -> list[Verdict]:
    """Throughput and p99 verdicts for the read and the write, with the figures behind them."""
    if PIN:
        os.sched_setaffinity(0, {0})  # the fixed-rate load runs here: on wrk's core, not the apps'
    # case -> per generation, per round: on / off, control / off (throughput); on - off (p99)
    ratios: dict[str, list[list[float]]] = collections.defaultdict(list)
    controls: dict[str, list[float]] = collections.defaultdict(list)
    p99_diffs: dict[str, list[list[float]]] = collections.defaultdict(list)
    p99_controls: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    print(
        f"{plan.generations} generations of fresh apps x {plan.rounds} rounds of {plan.seconds:g} s "
        f"per case and way, {'pinned' if PIN else 'not pinned'}"
    )
    with write_script() as script:
        for generation in range(plan.generations):
            throughput, latency = run_generation(generation, plan, script)
            for case, apps in throughput.items():
                pairs = list(zip(apps["on"], apps["off"], apps["control"], strict=True))
                ratios[case].append([on[0] / off[0] for on, off, _ in pairs])
                controls[case] += [control[0] / off[0] for _, off, control in pairs]
                cpu[case] += [on[2] / off[2] for on, off, _ in pairs]
            for case, runs in latency.items():
                pairs_l = list(zip(runs["on"], runs["off"], runs["control"], strict=True))
                p99_diffs[case].append([on[1] - off[1] for on, off, _ in pairs_l])
                p99_controls[case] += [control[1] - off[1] for _, off, control in pairs_l]
            print(f"  generation {generation + 1}: start order {'>'.join(start_order(generation))}")
    results = []
    for case in ratios:
        name = case.split()[0]
        thr = judge(f"request {name} throughput", ratios[case], RATIO_GOAL, at_least=True, digits=3)
        p99 = judge(f"request {name} p99 diff", p99_diffs[case], P99_GOAL_MS, at_least=False,
                    digits=2, unit=" ms")  # fmt: skip
        print(
            f"{case}: throughput on/off {thr.figure}, control/off "
            f"{statistics.median(controls[case]):.3f}, CPU per request on/off "
            f"{statistics.median(cpu[case]):.3f}; p99 on-off {p99.figure}, control-off "
            f"{statistics.median(p99_controls[case]):+.2f} ms"
        )
        results += [thr, p99]
    return results


# --- instruments ---------------------------------------------------------------------------


def instructions(few: int, many: int) -> list[Verdict]:
    """Instructions per request, whole app process under callgrind, monitor on / off: many
    requests less few, so start-up and shutdown cancel. Counts move ~1% between runs."""
    results = []
    print(f"instructions per request, whole app under callgrind, ({many} - {few}) requests")
    with tempfile.TemporaryDirectory() as workdir:
        for case in (READ, WRITE):
            per_request = {}
            for enabled in (False, True):
                low = served_instructions(enabled, case, few, Path(workdir))
                high = served_instructions(enabled, case, many, Path(workdir))
                per_request[enabled] = (high - low) / (many - few)
            ratio = per_request[True] / per_request[False]
            print(f"  {case}: off {per_request[False]:,.0f}, on {per_request[True]:,.0f}")
            # Timing decides how often the event loop and worker threads wake: ~1% run to run.
            name = f"request {case.split()[0]} instructions"
            results.append(judge_count(name, ratio, COUNT_GOAL, spread=0.01))
    return results


# Threads that run on the clock, not per request: APScheduler's own and its executor's workers.
BACKGROUND_THREADS = ("APScheduler", "ThreadPoolExecutor")
MONITOR_DIR = str(Path(__file__).resolve().parents[1] / "monitor") + os.sep


def module_group(filename: str) -> str:
    """`monitor/<module>.py` for this project, the package name for an installed one, the file
    name for the standard library."""
    if filename.startswith(MONITOR_DIR):
        return "monitor/" + filename[len(MONITOR_DIR) :]
    _, packages, inside = filename.partition("site-packages" + os.sep)
    if packages:
        return inside.split(os.sep, 1)[0]
    return os.path.basename(filename)


def opcode_tracer(counts: collections.Counter[str], active: list[bool]) -> Callable[..., Any]:
    """A `settrace` function counting opcodes by module group while `active[0]` is true; the
    monitor's background threads are left out (their work follows the clock, not requests)."""
    background: dict[int, bool] = {}

    def tracer(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if not active[0]:
            return tracer
        ident = threading.get_ident()
        skip = background.get(ident)
        if skip is None:
            name = threading.current_thread().name
            skip = background[ident] = name.startswith(BACKGROUND_THREADS)
        if skip:
            return None
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            counts[module_group(frame.f_code.co_filename)] += 1
        return tracer

    return tracer


def opcodes_per_request(enabled: bool, case: str, requests: int) -> dict[str, float]:
    """Opcodes per request of `case` by module group, in-process (Starlette's test client)."""
    from fastapi.testclient import TestClient

    from monitor.app import create_app
    from monitor.settings import Settings

    counts: collections.Counter[str] = collections.Counter()
    active = [False]
    tracer = opcode_tracer(counts, active)
    # Set before the app starts, so every thread it starts is traced from its first call.
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        app = create_app(Settings(database_url=DATABASE_URL, enabled=enabled))
        with TestClient(app) as client:
            product = client.post("/products", json={"name": "read-me", "price": 1}).json()

            def send() -> Any:
                if case == WRITE:
                    return client.post("/products", json=WRITE_BODY)
                return client.get(f"/products/{product['id']}")

            for _ in range(20):  # warm-up
                send()
            active[0] = True
            for _ in range(requests):
                if send().is_error:
                    raise SystemExit(f"{case}: the app answered an error")
            active[0] = False
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return {group: count / requests for group, count in counts.items()}


def bytecodes(requests: int) -> list[Verdict]:
    """Python opcodes per request, monitor on / off, and the modules where they differ."""
    warnings.filterwarnings("ignore", message="Using `httpx`")  # the test client's notice
    results = []
    print(f"Python opcodes per request, {requests} requests per case, request threads only")
    for case in (READ, WRITE):
        on, off = (
            opcodes_per_request(True, case, requests),
            opcodes_per_request(False, case, requests),
        )
        total_on, total_off = sum(on.values()), sum(off.values())
        print(f"{case}: on {total_on:,.0f}, off {total_off:,.0f} ({total_on - total_off:+,.0f}); "
              "where they differ:")  # fmt: skip
        differences = {group: on.get(group, 0) - off.get(group, 0) for group in on.keys() | off}
        for group, difference in sorted(differences.items(), key=lambda item: -abs(item[1])):
            if abs(difference) >= 1:
                print(f"  {group:<45} {difference:+8.1f}")
        # Event-loop timing moves the totals by about 100 opcodes of ~65,000.
        name = f"request {case.split()[0]} opcodes"
        results.append(judge_count(name, total_on / total_off, COUNT_GOAL, spread=0.002))
    return results
