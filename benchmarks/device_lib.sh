# Sourced by the benchmarks/device_*.sh scripts, from the repository root: the log folder ($OUT),
# the card's line in $OUT/card.txt (on the GPU machine), and the two ways they run things there.
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/card.txt"
fi

bench() {  # bench <tag> <adamk-bench args...>: batch 1, context 512, H100 plans, kernels from .devbench
  local tag=$1; shift
  ADAMK_CACHE=$PWD/.devbench timeout "${BENCH_TIMEOUT:-560}" python3 -m ada_mk.cli.bench --gpu-plan H100 --batch 1 \
    --context 512 --out-dir "$OUT/$tag" "$@" 2>&1 | tee "$OUT/bench-$tag.log" | grep -E "^\| |error|Error" | tail -20
}

gpu_tests() {  # gpu_tests <log> <pytest args...>: the GPU tests, kernels from .devbuild, within GPU_TEST_TIMEOUT s
  local log=$1; shift
  ADAMK_CACHE=$PWD/.devbuild timeout "${GPU_TEST_TIMEOUT:-540}" python3 -m pytest "$@" -m gpu -p no:cacheprovider \
    -q -s -rA > "$OUT/$log" 2>&1
  echo "pytest rc=$?"
  grep -E "rel err|greedy vs|stuck|us/step|kernel:|packed bytes|PASSED|FAILED|ERROR|passed|failed|^E " "$OUT/$log" | tail -80
}
