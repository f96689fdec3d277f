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
source benchmarks/device_lib.sh
case "${1:-tests}" in
  tests) GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-500} gpu_tests gpu-int4.log tests/gpu/test_dequant_int4_gpu.py tests/gpu/test_quantized_gpu.py -k "int4 or decode4" ;;
  smollm2) GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-500} gpu_tests gpu-smollm2-int4.log tests/gpu/test_smollm2_int4_gpu.py ;;  # the real Q4_1 GGUF
  mk8b) bench mk8b-int4 --config llama3-8b --systems megakernel,megakernel-int4,compile-int4 ;;
  mk1b) bench mk1b-int4 --config llama3.2-1b --systems megakernel,megakernel-int4,compile-int4,compile-flex ;;
esac
