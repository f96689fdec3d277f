#!/usr/bin/env bash
# The GPU tests written since the last GPU run of the whole suite (sessions 24-25: 8-bit multiply
# on f16 MMAs, int4, Qwen3, the asynchronous API, misuse and long runs, the examples, adamk-serve),
# in two phases that each fit one device call, most important first:
#   build here:  bash benchmarks/device_backlog.sh prebuild        (into .devbuild, ~10 min on 2 cores)
#   there:       bash benchmarks/device_backlog.sh quantized|api   (carry .devbuild)
# Logs land in $OUT. Per-phase limits: GPU_TEST_TIMEOUT (seconds, default 540).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh
export ADAMK_CACHE=$PWD/.devbuild
case "${1:-}" in
  prebuild)  # every kernel and library the phases below load (a cache miss there needs CUTLASS, absent)
    for m in tests.gpu.kernels tests.gpu.test_capi_gpu tests.gpu.test_misuse_gpu tests.gpu.test_long_run_gpu \
             tests.gpu.test_examples_gpu tests.gpu.serve_kernels; do
      echo "== $m"; python -m "$m" 2>&1 | tail -2
    done ;;
  quantized)  # the conversions (f16 and int4), then every 8-bit and int4 kernel against HF
    gpu_tests backlog-quantized.log tests/gpu/test_dequant_gpu.py tests/gpu/test_dequant_int4_gpu.py \
      tests/gpu/test_quantized_gpu.py ;;
  api)  # Qwen3, the C API old and new, misuse, long runs, the examples, the server
    gpu_tests backlog-api.log tests/gpu/test_megakernel.py::test_qwen3_two_layers_first \
      tests/gpu/test_megakernel.py::test_logits_match_hf -k "not test_logits_match_hf or qwen3" \
      tests/gpu/test_capi_gpu.py tests/gpu/test_async_api_gpu.py tests/gpu/test_misuse_gpu.py \
      tests/gpu/test_long_run_gpu.py tests/gpu/test_examples_gpu.py tests/gpu/test_serve_gpu.py ;;
  *) echo "usage: $0 prebuild|quantized|api" >&2; exit 2 ;;
esac
