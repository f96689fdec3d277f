"""The kernels the GPU tests use, built here (nvcc and the CUTLASS headers are on the CPU
machine) into the build cache ($ADAMK_CACHE), which travels to the GPU machine with the tests.

    ADAMK_CACHE=.devbuild python -m tests.gpu.kernels     # prebuild every kernel below
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import render
from ada_mk.config import ModelConfig, load_config
from ada_mk.search.plan import Plan
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[2]

# A build whose wait for layer 0's gate/up tiles (the down tasks' inputs) targets one count more
# than the producers give: every step must run out of time (adamk/megakernel.cuh, Waiter::on).
STUCK = ("ADAMK_TEST_OFF_BY_ONE",)

# (config, planned-for GPU, batch, layers override or None, extra defines)
KERNELS = [
    ("llama3.2-1b", "H100", 1, None, ()),
    ("llama3.2-1b", "H100", 4, None, ()),
    ("llama3.2-1b", "L20", 1, None, ()),  # the Ada plan (99 KB smem), compiled for sm_90 too
    ("llama3-8b", "H100", 1, None, ()),
    ("llama3-8b", "H100", 4, None, ()),
    ("qwen2.5-0.5b", "H100", 1, None, ()),
    ("qwen2.5-0.5b", "H100", 4, None, ()),
    ("mistral-7b", "H100", 1, None, ()),
    ("qwen3-0.6b", "H100", 1, None, ()),  # HF config.json as published: q/k head norms
    ("qwen3-0.6b", "H100", 4, None, ()),
    ("qwen3-0.6b", "L20", 1, None, ()),
    ("qwen3-8b", "H100", 1, None, ()),
    ("qwen3-8b", "H100", 4, None, ()),
    ("qwen3-0.6b", "H100", 4, 2, ()),  # the 2-layer first run of the q/k head norms
    ("llama3.2-1b", "H100", 1, 2, ()),  # the 2-layer first run
    ("llama3.2-1b", "H100", 1, 2, STUCK),  # a wait that must time out
    ("smollm2-135m", "H100", 1, 2, ()),  # compute-sanitizer runs
    ("smollm2-135m", "H100", 4, 2, ()),
]

# 8-bit weights (tests/gpu/test_quantized_gpu.py): (config, planned-for GPU, batch, weights format),
# ordered so that the cases of one (config, format) share its quantized HF model.
Q8_CASES = [(c, g, b, w) for c in ("llama3.2-1b", "qwen2.5-0.5b") for w in ("fp8", "int8")
            for g, b in (("H100", 1), ("H100", 4), ("L20", 1))]
Q8_CASES += [(c, "H100", b, w) for c in ("mistral-7b", "llama3-8b") for w in ("fp8", "int8") for b in (1, 4)]

# int4 weights (tests/gpu/test_quantized_gpu.py): (config, planned-for GPU, batch, group, symmetric),
# ordered so that the cases of one (config, group, kind) share their quantized HF model: group 128
# asymmetric (AWQ / GPTQ's usual form, the format's default) and group 32 symmetric (GGUF Q4_0's).
INT4_CASES = [(c, "H100", b, 128, False) for c in ("llama3.2-1b", "qwen2.5-0.5b") for b in (1, 4)]
INT4_CASES += [("llama3.2-1b", "H100", b, 32, True) for b in (1, 4)]
INT4_CASES += [("llama3-8b", "H100", 1, 128, False)]

# Plans the search does not pick for any shipped config, with stages K-split by force (the
# searched tilings otherwise): (config, GPU, batch, layers, extra defines, {stage: K-split}).
FORCED = [
    ("llama3.2-1b", "H100", 4, 2, (), {"gate_up": 2}),  # gate/up float partials, summed by the down tasks
]


def config_path(config: str) -> Path:
    """configs/<config>.yaml, else the HF config.json kept as configs/<config>.json."""
    yaml = ROOT / "configs" / f"{config}.yaml"
    return yaml if yaml.exists() else ROOT / "configs" / f"{config}.json"


def model_for(config: str, gpu: str, batch: int, layers: int | None, max_context: int = 1024, weights: str = "bf16",
              weights_group: int | None = None):
    m, d = load_config(config_path(config), gpu=gpu, batch=batch, max_context=max_context, weights=weights,
                       weights_group=weights_group)
    if layers is not None:
        m = dataclasses.replace(m, num_hidden_layers=layers, name=f"{m.name}-{layers}l")
    return m, d


def forced_plan(m: ModelConfig, d, ksplits: dict[str, int]) -> Plan:
    """The searched plan with these stages K-split as given, scheduled again."""
    from ada_mk.search.search import Searcher

    base = make_plan(m, d)
    tilings = {k: dataclasses.replace(t, ksplit=ksplits.get(k, t.ksplit)) for k, t in base.tilings.items()}
    return Searcher(m, d).with_splits(tilings, base.attn_splits)[1]


def kernel_for(config: str, gpu: str, batch: int, layers: int | None = None, defines: tuple[str, ...] = (),
               log=None, profile: bool = False, strategy: str = "search", max_context: int = 1024,
               ksplits: dict[str, int] | None = None, weights: str = "bf16",
               weights_group: int | None = None) -> tuple[Plan, Artifacts]:
    m, d = model_for(config, gpu, batch, layers, max_context, weights, weights_group)
    plan = forced_plan(m, d, ksplits) if ksplits else make_plan(m, d, strategy=strategy)
    archs = ["sm_90a"]
    return plan, build(render(plan), archs, profile=profile, library=False, log=log, defines=defines)


if __name__ == "__main__":
    for spec in KERNELS:
        plan, art = kernel_for(*spec, log=lambda s: print("  " + s[:160], file=sys.stderr))
        print(f"{plan.kernel_name}: {art.fatbin}", file=sys.stderr)
    for config, gpu, batch, weights in Q8_CASES:
        plan, art = kernel_for(config, gpu, batch, weights=weights, log=lambda s: print("  " + s[:160], file=sys.stderr))
        print(f"{plan.kernel_name}: {art.fatbin}", file=sys.stderr)
    for config, gpu, batch, group, _ in INT4_CASES:
        plan, art = kernel_for(config, gpu, batch, weights="int4", weights_group=group,
                               log=lambda s: print("  " + s[:160], file=sys.stderr))
        print(f"{plan.kernel_name}: {art.fatbin}", file=sys.stderr)
    for *spec, ksplits in FORCED:
        plan, art = kernel_for(*spec, log=lambda s: print("  " + s[:160], file=sys.stderr), ksplits=ksplits)
        print(f"{plan.kernel_name} {ksplits}: {art.fatbin}", file=sys.stderr)
