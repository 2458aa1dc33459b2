"""Where the monitor's per-request instructions go: the served app built up one part at a time.

`bench/overhead_instructions.py` counts the whole monitor; this runs the same callgrind count
(whole process, MANY - FEW write requests) for each step of `bench/parts_app.py`: off, the
monitor's modules imported, plus the attribution middleware, the monitor attached without its
background work, and as served. Counts move by about 10k per request between runs (timing
decides how often the event loop and worker threads wake up), so steps smaller than that are
not resolved by one run. The `on` step also counts the once-a-second leak sweep on a clock that
valgrind slows about 50-fold, which makes it look about 50 times dearer per request than it is.
Run: `.venv/bin/python bench/overhead_parts.py` (needs `valgrind`; about 12 minutes).
Env: BENCH_FEW (200), BENCH_MANY (1000).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import WRITE
from bench.overhead_instructions import FEW, MANY, per_request
from bench.parts_app import ENABLED_PARTS, PARTS


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    print(
        f"{WRITE}: instructions per request, whole app under callgrind, ({MANY} - {FEW}) requests"
    )
    print(f"{'part':12} {'per request':>12} {'vs off':>8} {'step':>9}")
    off = previous = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for part in PARTS:
            count = per_request(
                part in ENABLED_PARTS,
                WRITE,
                Path(workdir),
                factory="bench.parts_app:create_part_app",
                extra_env={"BENCH_PART": part},
            )
            off = off or count  # the first part is "off"
            step = count - (previous or count)
            print(f"{part:12} {count:12,.0f} {count / off:8.4f} {step:+9,.0f}", flush=True)
            previous = count


if __name__ == "__main__":
    main()
