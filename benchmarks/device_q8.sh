#!/usr/bin/env bash
# 8-bit weights on the lent GPU, in phases that each fit one device call (see benchmarks/README.md):
#   build here:  ADAMK_CACHE=.devbuild python -m tests.gpu.kernels
#                ADAMK_CACHE=.devbench adamk-bench --build-only --gpu-plan H100 --config llama3-8b \
#                    --config llama3.2-1b --systems megakernel,megakernel-fp8,megakernel-int8
#   there:       bash benchmarks/device_q8.sh core|tests|diag|mk8b|baselines8b|mk1b   (carry .devbuild, .devbench)
# Logs and bench tables land in $OUT. ADAMK_COMMIT names the commit the trees were built from.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh
case "${1:-tests}" in
  tests)  # the device's 8-bit decode, the 8-bit kernels against HF, the bf16 kernels' own suite
    GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-400} gpu_tests gpu-tests.log tests/gpu/test_dequant_gpu.py \
      tests/gpu/test_quantized_gpu.py tests/gpu/test_megakernel.py tests/gpu/test_capi_gpu.py ;;
  core)  # what one short call can check: 8-bit decode and kernels on two models, the bounded waits, 8B speed
    GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-300} gpu_tests gpu-tests-core.log tests/gpu/test_dequant_gpu.py \
      tests/gpu/test_quantized_gpu.py tests/gpu/test_megakernel.py::test_two_layers_first \
      tests/gpu/test_megakernel.py::test_stuck_wait_times_out_and_resets tests/gpu/test_capi_gpu.py \
      tests/gpu/test_async_api_gpu.py -k "not qwen2.5 and not mistral"
    bench mk8b --config llama3-8b --systems megakernel,megakernel-fp8,megakernel-int8 ;;
  diag)  # where the 8-bit multiply's time goes: benchmarks/experiment.py's q8 variants, and the multiply's SASS
    ADAMK_EXPERIMENT=q8 ADAMK_CACHE=$PWD/.devbuild timeout "${DIAG_TIMEOUT:-300}" python3 -m benchmarks.experiment \
      2>&1 | tee "$OUT/experiment-q8.log" | grep -E "ms/token|Error|error" | tail -30
    for f in $(ls -d .devbuild/build/adamk_llama3_8b_h100_bs1_{fp8,int8}-* | head -20); do
      fb=$(ls "$f"/*.fatbin | grep -v _ablate | head -1); [ -n "$fb" ] || continue
      cuobjdump -sass "$fb" 2>&1 | gzip > "$OUT/sass-$(basename "$f").txt.gz" || true
    done ;;
  mk8b) bench mk8b --config llama3-8b --systems megakernel,megakernel-fp8,megakernel-int8 ;;
  baselines8b) bench base8b --config llama3-8b --systems megakernel-fp8,megakernel-int8,compile-fp8,compile-int8 ;;
  mk1b) bench mk1b --config llama3.2-1b --systems megakernel,megakernel-fp8,megakernel-int8,compile-flex ;;
esac
