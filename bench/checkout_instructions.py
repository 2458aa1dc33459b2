"""Instructions per checkout+checkin cycle, bare vs monitored, counted by valgrind (callgrind).

Wall-clock ratios on a shared 2-core machine swing by 10% between identical runs; instruction
counts do not, so this is the figure to compare commits by. Each engine runs the cycle twice
(N1 and N2 times) and the difference, divided by N2 - N1, removes start-up and import costs.
Run: `.venv/bin/python bench/checkout_instructions.py` (needs `valgrind`; takes about a minute).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

URL = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg2://", 1
)
FEW, MANY = 1_000, 6_000
MODES = ("bare", "monitored, site capture off", "monitored")


def cycle_program(mode: str, cycles: int) -> str:
    monitor = {
        "bare": "",
        "monitored, site capture off": "PoolMonitor(engine, probe=False, capture_sites=False)",
        "monitored": "PoolMonitor(engine, probe=False)",
    }[mode]
    return f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from sqlalchemy import create_engine
from monitor.pool_monitor import PoolMonitor
engine = create_engine({URL!r}, pool_size=5)
{monitor}
def engine_cycle(engine):
    engine.connect().close()
for _ in range({cycles}):
    engine_cycle(engine)
"""


def instructions(mode: str, cycles: int, workdir: Path) -> int:
    out = workdir / "callgrind.out"
    script = workdir / "cycle.py"
    script.write_text(cycle_program(mode, cycles))
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script],
        check=True,
        capture_output=True,
        # A fixed hash seed keeps dict layouts, and so the counts, the same from run to run.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("callgrind wrote no summary line")
    return int(match.group(1))


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    per_cycle: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in MODES:
            few = instructions(mode, FEW, Path(workdir))
            many = instructions(mode, MANY, Path(workdir))
            per_cycle[mode] = (many - few) / (MANY - FEW)
    bare = per_cycle["bare"]
    print(f"{'engine.connect() + close()':30} {'instructions':>13} {'ratio':>7}")
    for mode in MODES:
        print(f"{mode:30} {per_cycle[mode]:13,.0f} {per_cycle[mode] / bare:7.3f}")


if __name__ == "__main__":
    main()
