#!/usr/bin/env bash
# The Python packages bench/gpu_check.py needs that the GPU machine's image lacks, as wheels for its
# Python 3.12, into .whl/ (git-ignored through .git/info/exclude; carried to the machine, 64 MiB at most).
# `PY=3.11 DEST=.whl-3.11 bash bench/gpu_wheels.sh` fetches the same for a rehearsal here.
# The image already has torch, transformers, accelerate, peft, pytest, rich, typer, matplotlib, pyarrow,
# pandas, numpy, sympy and hypothesis. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-3.12}"
DEST="${DEST:-.whl}"
mkdir -p "$DEST" .git/info
grep -qx "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" \
  "trl==1.16.0" "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" "omegaconf==2.3.1" "datasets==5.2.0" \
  "dill==0.4.1" "multiprocess==0.70.19" "gguf==0.19.0"
# antlr4's 4.9.3 runtime (the version math-verify and omegaconf both accept) is published as a source
# archive only: build its pure-Python wheel here
python3 -m pip wheel --quiet --no-deps -w "$DEST" "antlr4-python3-runtime==4.9.3"
du -sh "$DEST"
