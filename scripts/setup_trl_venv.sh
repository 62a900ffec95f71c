#!/usr/bin/env bash
# Creates .venv-trl: TRL's GRPOTrainer for scripts/bench_vs_trl.py, the side-by-side RL-step benchmark. It is a
# benchmark-only dependency: capojax never imports TRL, and the trainer's .venv does not get it.
#
# Order matters: torch==2.13.0 first (the CPU wheel this machine uses; installed from pip's cache when it is
# there), then trl, transformers, datasets and accelerate, which then keep that torch instead of resolving another.
#
# Idempotent: a stamp holding this script's checksum skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRL_VENV:-.venv-trl}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TRL_SPEC=${TRL_SPEC:-trl}
STAMP="$VENV/.capojax-trl-installed"
WANT="$(sha256sum "$0" | cut -d' ' -f1) $TORCH_SPEC $TRL_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "$VENV is ready ($TRL_SPEC)"
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "$TORCH_SPEC"
$PIP install -q "$TRL_SPEC" transformers datasets accelerate
"$VENV/bin/python" - <<'PY'
import torch, transformers, trl
print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
PY
echo "$WANT" > "$STAMP"
echo "$VENV is ready ($TRL_SPEC)"
