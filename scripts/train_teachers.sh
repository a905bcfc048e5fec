#!/usr/bin/env bash
# Re-make the shipped teachers: train (resumable), evaluate, write reports/, pack fdistill/assets/.
# Each stage resumes from its newest checkpoint, so the script can be re-run after an interruption.
#   scripts/train_teachers.sh [digits|moving_digits|all] [config overrides ...] [-- eval_teacher.py arguments ...]
#   (default: all; digits ~40 min on 2 cores; moving_digits ~7 min on a GPU). Overrides and evaluation
#   arguments are for smaller runs, e.g. `scripts/train_teachers.sh digits steps=2 -- --num-samples 20`;
#   the shipped assets come from the plain command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
which=${1:-all}
shift || true
overrides=()
while [[ $# -gt 0 && $1 != -- ]]; do overrides+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
eval_args=("$@")

if [[ $which == digits || $which == all ]]; then
  $PY -m fdistill.training.teacher --config configs/digits_teacher.yaml --resume latest "${overrides[@]}"
  $PY scripts/eval_teacher.py digits --run runs/digits_teacher --steps 18 --export "${eval_args[@]}"
fi
if [[ $which == moving_digits || $which == all ]]; then
  # The shipped asset is this one command run on one H100 (6.5 min); on 2 CPU cores ~10 h.
  $PY -m fdistill.training.teacher --config configs/moving_digits_teacher.yaml --resume latest "${overrides[@]}"
  $PY scripts/eval_teacher.py moving_digits --run runs/moving_digits_teacher --steps 25 --export "${eval_args[@]}"
fi
