#!/usr/bin/env bash
# Round 2 of the calibration study, exactly as pre-registered in docs/study/preregistration_round2.md:
# screen three experiments on seed 0, select by GRPO's AUC-mean drop below the base (blind to CAPO/DCPO), confirm on
# seeds 1 and 2.   Usage: bash scripts/study_round2.sh [OUT_DIR=runs/study_round2]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/study_round2}
PY=${PY:-.venv/bin/python}
COMMON=(--config=configs/study_calibration.py --config.algorithms=grpo,capo,dcpo)
PHRASING=(--config.run.model.tiny_base.openers=8 --config.run.model.tiny_base.step_phrasings=6)
OVEROPT=(--config.run.optim.lr=5e-4 --config.run.train.steps=60 --config.run.log.val_every=20)

run() {  # run NAME SEEDS ARGS...
  local name=$1 seeds=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $name seeds $seeds"
  "$PY" -m capojax.study "${COMMON[@]}" --config.seeds="$seeds" --workdir="$OUT/$name" "$@"
}

run phrasing 0 "${PHRASING[@]}"
run overopt 0 "${OVEROPT[@]}"
run combined 0 "${PHRASING[@]}" "${OVEROPT[@]}"

SELECTED=$("$PY" - "$OUT" <<'PYEOF'
import json, sys
drops = {}
for name in ("phrasing", "overopt", "combined"):
    s = json.load(open(f"{sys.argv[1]}/{name}/study.json"))["summary"]
    drops[name] = s["base"]["val/auc_mean"] - s["variants"]["grpo"]["val/auc_mean"]["mean"]
    print(f"{name}: GRPO AUC-mean drop below base {drops[name]:+.4f}", file=sys.stderr)
print(max(drops, key=drops.get))
PYEOF
)
echo "== selected: $SELECTED" | tee "$OUT/selected.txt"
case $SELECTED in
  phrasing) run phrasing 0,1,2 "${PHRASING[@]}" ;;
  overopt) run overopt 0,1,2 "${OVEROPT[@]}" ;;
  combined) run combined 0,1,2 "${PHRASING[@]}" "${OVEROPT[@]}" ;;
esac
echo "== $(date -u +%H:%M:%S) done"
