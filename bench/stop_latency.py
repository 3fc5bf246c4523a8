"""Seconds from SIGTERM to the exit of `hybridrft train`, its checkpoint written (docs/reliability.md).

Three moments, on the quickstart recipe (SmolLM2-135M, one process): while step 2 samples (abandoned:
step 1 is saved), inside step 2's first optimizer update (the step is finished, then saved), and 3 s
into step 2 without a pause point. Uses the trainer's test-only pause points.

    python bench/stop_latency.py [--out runs/stop-latency]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "src" / "hybridrft" / "config" / "recipes" / "quickstart.yaml"


def stop_once(out: Path, point: str | None) -> tuple[int, float, str]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ}
    if point:
        env["HYBRIDRFT_TEST_PAUSE_AT"] = point
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridrft.cli.main", "train", str(RECIPE), f"train.output_dir={out}",
         "train.max_steps=4", "eval.at_start=false"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    for line in process.stderr:
        if (point and f"paused at {point}" in line) or (not point and "step 1 " in line):
            break
    if not point:
        time.sleep(3)  # somewhere inside step 2
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    code = process.wait()
    said = next((line for line in rest.splitlines() if line.startswith("stopped:")), "")
    return code, time.monotonic() - sent, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/stop-latency"))
    args = parser.parse_args()
    for point in ("sampling:2", "update:2", None):
        code, seconds, said = stop_once(args.out / (point or "anywhere").replace(":", "-"), point)
        print(f"{point or 'anywhere in step 2'}: exit {code} after {seconds:.1f} s; {said}", flush=True)


if __name__ == "__main__":
    main()
