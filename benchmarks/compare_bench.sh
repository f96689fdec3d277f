#!/usr/bin/env bash
# adamk-bench (MegaKernel only) of several source trees in one device call, in alternating rounds
# (A B, A B), so that drift of the card hits every tree alike: how a change is checked to be no
# slower than the commit before it.
#   build here, per tree:  (cd TREE && ADAMK_CACHE=$PWD/../CACHE PYTHONPATH=$PWD \
#                           python -m MODULE --build-only --gpu-plan H100 $BENCH_ARGS)
#   then, there:           BENCH_ARGS="..." bash benchmarks/compare_bench.sh TREE:CACHE:MODULE ...
# Each argument names a tree and its build cache relative to the repository root (carry both) and
# the tree's adamk-bench module (ada_mk.cli.bench, or ada_mk.bench.cli in older trees).
# BENCH_ARGS: the configs, batch and contexts; ROUNDS (default 2). Logs and every run's outputs go
# to $OUT as one log and one tarball.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
TAG=${TAG:-compare}
export PYTHONUNBUFFERED=1
for round in $(seq "${ROUNDS:-2}"); do
  for spec in "$@"; do
    IFS=: read -r tree cache module <<<"$spec"
    name=$(basename "$tree" | tr -c 'a-zA-Z0-9\n' '_')r$round
    (cd "$tree" && ADAMK_CACHE=$ROOT/$cache PYTHONPATH=$PWD timeout "${TREE_TIMEOUT:-300}" \
       python3 -m "$module" --systems megakernel --gpu-plan H100 --no-check $BENCH_ARGS \
       --results "/tmp/$TAG/$name/RESULTS.md" --plot-dir "/tmp/$TAG/$name" --out-json "/tmp/$TAG/$name/bench.json") 2>&1 \
      | grep -v Warning | grep -E "ms|GB/s|error|Error" | sed "s|^|round $round, $tree: |" | tee -a "$OUT/$TAG.log"
  done
done
tar -czf "$OUT/$TAG.tgz" -C /tmp "$TAG" 2>/dev/null
