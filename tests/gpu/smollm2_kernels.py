"""The kernels tests/gpu/test_smollm2_gpu.py needs, prebuilt on the CPU machine into the build
cache that travels to the GPU machine:

    ADAMK_CACHE=.devbuild python -m tests.gpu.smollm2_kernels

SmolLM2-135M-Instruct's GGUF reads back as exactly configs/smollm2-135m.yaml's model (checked by
tests/test_smollm2.py), so no GGUF is needed here. Plans for the H100 and the H200 (the test plans
for the GPU it finds), batch 1, max_context 4096 (a 2,000-token prompt plus decoding); the fatbin
alone (MegaKernelEngine, adamk-run) and the C-ABI library (examples/c, ctypes).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import render
from ada_mk.config import DeployConfig, ModelConfig, load_config
from ada_mk.config.deploy import DEFAULT_GROUPS
from ada_mk.config.gpus import lookup_gpu
from ada_mk.search.plan import Plan
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[2]
GPUS = ("H100", "H200")
MAX_CONTEXT = 4096


def smollm2_model() -> ModelConfig:
    return load_config(ROOT / "configs" / "smollm2-135m.yaml")[0]


INT4_GROUP = 32  # the GGUF's Q4_1 / Q4_0 blocks (K = 576 is no whole groups of int4's default 128)


def smollm2_plan(model: ModelConfig, gpu: str, max_context: int = MAX_CONTEXT, weights: str = "bf16") -> Plan:
    group = INT4_GROUP if weights == "int4" else DEFAULT_GROUPS[weights]
    return make_plan(model, DeployConfig(gpu=lookup_gpu(gpu), batch=1, max_context=max_context, weights=weights,
                                         weights_group=group))


def smollm2_kernel(model: ModelConfig, gpu: str, library: bool, log=None, weights: str = "bf16") -> tuple[Plan, Artifacts]:
    plan = smollm2_plan(model, gpu, weights=weights)
    return plan, build(render(plan), [plan.deploy.gpu.nvcc_arch], library=library, log=log)


def prebuild(log=None) -> list[Artifacts]:
    model = smollm2_model()
    out = []
    for gpu in GPUS:
        for library in (False, True):
            plan, art = smollm2_kernel(model, gpu, library, log)
            print(f"{plan.kernel_name} ({'library' if library else 'fatbin'}): {art.directory}", file=sys.stderr)
            out.append(art)
        for weights in ("fp8", "int8", "int4"):  # tests/gpu/test_smollm2_8bit_gpu.py, test_smollm2_int4_gpu.py
            plan, art = smollm2_kernel(model, gpu, False, log, weights)
            print(f"{plan.kernel_name}: {art.directory}", file=sys.stderr)
            out.append(art)
    return out


if __name__ == "__main__":
    prebuild(log=lambda s: print("  " + s[:160], file=sys.stderr))
