#!/usr/bin/env bash
# int4 weights on the lent GPU, in phases that each fit one device call (see benchmarks/README.md):
#   build here:  ADAMK_CACHE=.devbuild python -m tests.gpu.kernels
#                ADAMK_CACHE=.devbuild python -m tests.gpu.smollm2_kernels
#                ADAMK_CACHE=.devbench adamk-bench --build-only --gpu-plan H100 --config llama3-8b \
#                    --config llama3.2-1b --systems megakernel,megakernel-int4
#   there:       bash benchmarks/device_int4.sh tests|smollm2|mk8b|mk1b   (carry .devbuild, .devbench)
# Logs and bench tables land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/card.txt"
bench() {  # bench <tag> <adamk-bench args...>
  local tag=$1; shift
  ADAMK_CACHE=$PWD/.devbench timeout "${BENCH_TIMEOUT:-560}" python3 -m ada_mk.cli.bench --gpu-plan H100 --batch 1 \
    --context 512 --out-dir "$OUT/$tag" "$@" 2>&1 | tee "$OUT/bench-$tag.log" | grep -E "^\| |error|Error" | tail -20
}
gpu_tests() {  # gpu_tests <log> <pytest args...>
  local log=$1; shift
  ADAMK_CACHE=$PWD/.devbuild timeout "${GPU_TEST_TIMEOUT:-500}" python3 -m pytest "$@" -m gpu -p no:cacheprovider \
    -q -s -rA > "$OUT/$log" 2>&1
  echo "pytest rc=$?"
  grep -E "rel err|greedy vs|kernel:|packed bytes|PASSED|FAILED|ERROR|passed|failed|^E " "$OUT/$log" | tail -80
}
case "${1:-tests}" in
  tests) gpu_tests gpu-int4.log tests/gpu/test_dequant_int4_gpu.py tests/gpu/test_quantized_gpu.py -k "int4 or decode4" ;;
  smollm2) gpu_tests gpu-smollm2-int4.log tests/gpu/test_smollm2_int4_gpu.py ;;  # the real Q4_1 GGUF
  mk8b) bench mk8b-int4 --config llama3-8b --systems megakernel,megakernel-int4,compile-int4 ;;
  mk1b) bench mk1b-int4 --config llama3.2-1b --systems megakernel,megakernel-int4,compile-int4,compile-flex ;;
esac
