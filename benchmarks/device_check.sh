#!/usr/bin/env bash
# One device call for a kernel change: a quick correctness pass against HF, the shared-memory race
# check, then the timing experiments (benchmarks/ablation.py) and, when .base holds the previous
# commit's tree with its kernels built into .devbase, that kernel timed in the same call.
#   build here:  ADAMK_CACHE=.devbuild python -m tests.gpu.kernels
#                ADAMK_CACHE=.devbuild python -m benchmarks.ablation prebuild
#   then, there: bash benchmarks/device_check.sh   (carry .devbuild, and .base/.devbase if any)
# ADAMK_CASES (config:batch,...) picks the timed cases, here and there alike.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
export ADAMK_CACHE=$PWD/.devbuild PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
T=tests/gpu/test_megakernel.py
timeout "${CHECK_TIMEOUT:-200}" python3 -m pytest -p no:cacheprovider -q -x -m gpu \
  "$T::test_logits_match_hf[llama3.2-1b-H100-bs1-p500]" "$T::test_logits_match_hf[llama3.2-1b-H100-bs4-p1]" \
  "$T::test_logits_match_hf[llama3-8b-H100-bs1-p500]" "$T::test_logits_match_hf[llama3-8b-H100-bs4-p500]" \
  "$T::test_two_layers_first" \
  "$T::test_staggered_positions_match_hf" 2>&1 | tail -15 | tee "$OUT/check.log"
timeout 120 compute-sanitizer --tool racecheck python3 -m tests.gpu.sanitize_run 2>&1 | tail -4 | tee "$OUT/racecheck.log"
CASES=${ADAMK_CASES:-llama3.2-1b:1,llama3-8b:1}
base() {  # the previous commit's kernel of each case (its plan made by its own search)
  [ -d .base ] && [ -d .devbase ] || return 0
  for case in ${CASES//,/ }; do
    (cd .base && ADAMK_CACHE=$PWD/../.devbase PYTHONPATH=$PWD python3 -c "
from benchmarks.ablation import time_variant
print('previous commit, ${case%:*} bs${case#*:} ctx512: %.3f ms/token' % time_variant('${case%:*}', 'H100', ${case#*:}, ()), flush=True)")
  done
}
{ base; timeout "${ABLATION_TIMEOUT:-300}" python3 -m benchmarks.ablation; base; } 2>&1 | grep -v Warning | tee "$OUT/timing.log"
