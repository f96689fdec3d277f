"""The kernels `adamk-serve` uses on the GPU (tests/gpu/test_serve_gpu.py and
benchmarks/serve_load.py), prebuilt on the CPU machine into the build cache that travels:

    ADAMK_CACHE=.devbuild python -m tests.gpu.serve_kernels

SmolLM2-135M (configs/smollm2-135m.yaml, which the GGUF reads back as) for the H100 and the
H200: batch 4 with a 1,024-token cache (the GPU test) and batch 8 with 2,048 (the load test,
`adamk-serve --batch 8 --max-context 2048`). The plans are made by `deploy_for`, as adamk-serve
makes them, so the server finds them in the cache.
"""
from __future__ import annotations

import sys

from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import render
from ada_mk.config import DeployConfig, deploy_for
from ada_mk.search.planner import make_plan
from tests.gpu.smollm2_kernels import smollm2_model

GPUS = ("H100", "H200")
TEST = (4, 1024)  # batch, max_context of tests/gpu/test_serve_gpu.py
LOAD = (8, 2048)  # of benchmarks/serve_load.py


def serve_deploy(gpu: str, batch: int, max_context: int) -> DeployConfig:
    return deploy_for(smollm2_model(), gpu, batch, max_context)


def serve_kernel(gpu: str, batch: int, max_context: int, log=None) -> Artifacts:
    plan = make_plan(smollm2_model(), serve_deploy(gpu, batch, max_context))
    return build(render(plan), [plan.deploy.gpu.nvcc_arch], library=False, log=log)


if __name__ == "__main__":
    for gpu in GPUS:
        for batch, ctx in (TEST, LOAD):
            art = serve_kernel(gpu, batch, ctx, log=lambda s: print("  " + s[:160], file=sys.stderr))
            print(f"smollm2 {gpu} batch {batch} context {ctx}: {art.directory}", file=sys.stderr)
