#!/usr/bin/env bash
# Everything that needs the GPU, in one call on the lent machine (see DEVELOPERS.md):
#   build here:  ADAMK_CACHE=.devbuild python -m tests.gpu.kernels
#   then, there: bash tests/gpu/run_on_device.sh [pytest args]   (carry .devbuild)
# Logs land in $OUT (or ./device-logs).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-device-logs}; mkdir -p "$OUT"
export ADAMK_CACHE=$PWD/.devbuild PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/card.txt"
timeout "${GPU_TEST_TIMEOUT:-540}" python3 -m pytest tests/gpu -m gpu -p no:cacheprovider -q -s -rA "$@" 2>&1 | tee "$OUT/gpu-tests.log"
