#!/usr/bin/env bash
# Time the same cases with the kernels of several source trees in one device call, in alternating
# rounds (A B C, A B C), so that drift of the card hits every tree alike.
#   build here, per tree:  (cd TREE && ADAMK_CACHE=$PWD/../CACHE PYTHONPATH=$PWD \
#                           ADAMK_CASES=... ADAMK_VARIANTS=... python -m benchmarks.ablation prebuild)
#   then, there:           bash benchmarks/compare_trees.sh .base:.devbase .:.devbuild ...
# Each argument is TREE:CACHE, relative to the repository root (carry both). ADAMK_CASES,
# ADAMK_VARIANTS (default "full kernel") and ADAMK_CONTEXT as for benchmarks/ablation.py;
# ROUNDS (default 2). MODULE=benchmarks.experiment times experiment.py's variants instead (with
# ADAMK_EXPERIMENT=q8: the 8-bit kernels, e.g. ADAMK_VARIANTS="fp8, searched plan|int8, searched plan").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export ADAMK_VARIANTS=${ADAMK_VARIANTS:-full kernel} PYTHONUNBUFFERED=1
for round in $(seq "${ROUNDS:-2}"); do
  for spec in "$@"; do
    tree=${spec%%:*} cache=${spec#*:}
    (cd "$tree" && ADAMK_CACHE=$ROOT/$cache PYTHONPATH=$PWD timeout "${TREE_TIMEOUT:-300}" \
       python3 -m "${MODULE:-benchmarks.ablation}") 2>&1 \
      | grep -v Warning | sed "s|^|round $round, $tree: |"
  done
done
