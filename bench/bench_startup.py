"""Start-up time: from launching the application to its main window shown, frozen bundle vs ``python -m``.

Run: ``python bench/bench_startup.py [--repeats 5] [--bundle dist/sd-fsmis/sd-fsmis]``. Each run starts a
fresh process with ``SD_FSMIS_STARTUP_REPORT=1`` (the application prints ``window shown after X s``,
measured from its own process start, then closes) and ``QT_QPA_PLATFORM=offscreen`` unless a display is
set, in a throw-away ``SD_FSMIS_HOME``. The first run of each kind is reported apart (cold file cache);
the others give the median. The frozen bundle is skipped when it has not been built (``make bundle``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"window shown after ([0-9.]+) s")


def launch(command: list[str], home: Path) -> tuple[float, float]:
    """One start: (the application's own figure, the wall time of the whole process including exit)."""
    env = {**os.environ, "SD_FSMIS_STARTUP_REPORT": "1", "SD_FSMIS_HOME": str(home)}
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        env["QT_QPA_PLATFORM"] = "offscreen"
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    match = PATTERN.search(result.stdout)
    if result.returncode != 0 or match is None:
        output = f"{result.stdout}\n{result.stderr}"
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{output}")
    return float(match[1]), wall


def measure(name: str, command: list[str], repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sd-fsmis-startup-") as folder:
        runs = [launch(command, Path(folder)) for _ in range(repeats)]
    first, rest = runs[0], runs[1:] or runs
    shown = statistics.median(r[0] for r in rest)
    wall = statistics.median(r[1] for r in rest)
    print(
        f"{name:<22} window shown after {shown:5.2f} s (median of {len(rest)}; first run {first[0]:.2f} s), "
        f"process start to exit {wall:5.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "sd-fsmis" / "sd-fsmis")
    args = parser.parse_args()
    print(f"start-up to the main window shown ({args.repeats} runs each, {os.cpu_count()} CPUs)")
    measure("python -m sd_fsmis", [sys.executable, "-m", "sd_fsmis"], args.repeats)
    if args.bundle.is_file() and os.access(args.bundle, os.X_OK):
        measure("frozen bundle", [str(args.bundle)], args.repeats)
    else:
        print(f"frozen bundle          not built ({args.bundle}): make bundle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
