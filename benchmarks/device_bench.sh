#!/usr/bin/env bash
# One device call measuring where the product stands on the lent card: the per-task profile of the
# batch-8 kernels, then adamk-bench at batch 8 (context 512) and batch 1 (contexts 512 and 4,096),
# MegaKernel and torch.compile + flex_attention side by side, logits checked against HF.
#   build here:  GPU=H200; ADAMK_CACHE=.devbench python -m ada_mk.cli.bench --build-only --gpu-plan $GPU \
#                  --config llama3-8b --config llama3.2-1b --batch 1 --context 512 4096   (and --batch 8)
#                ADAMK_GPU=$GPU ADAMK_CACHE=.devbench ADAMK_CASES=llama3.2-1b:8,llama3-8b:8 \
#                  python -m benchmarks.profile_step prebuild
#   then, there: ADAMK_GPU=$GPU ADAMK_COMMIT=<sha> bash benchmarks/device_bench.sh   (carry .devbench)
# STEPS (default "profile bs8 bs1") picks the parts; logs, section.md files and JSON land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
export ADAMK_CACHE=$PWD/.devbench PYTHONPATH=$PWD PYTHONUNBUFFERED=1
GPU=${ADAMK_GPU:-H200}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
bench() {  # bench NAME ARGS...: one adamk-bench run, its outputs tarred into $OUT/NAME.tgz
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-280}" python3 -m ada_mk.cli.bench --config llama3.2-1b --config llama3-8b \
    --systems megakernel,compile-flex --gpu-plan "$GPU" --no-coordinate-descent --windows 3 \
    --out-dir "/tmp/$name" "$@" 2>&1 | grep -v Warning | tail -40 | tee "$OUT/$name.log"
  tar -czf "$OUT/$name.tgz" -C /tmp "$name" 2>/dev/null
}
for step in ${STEPS:-profile bs8 bs1}; do
  case $step in
    profile) ADAMK_CASES=llama3.2-1b:8,llama3-8b:8 timeout 120 python3 -m benchmarks.profile_step 2>&1 \
               | grep -v Warning | tee "$OUT/profile.log" ;;
    bs8) bench bs8 --batch 8 --context 512 ;;
    bs1) bench bs1 --batch 1 --context 512 4096 ;;
  esac
done
