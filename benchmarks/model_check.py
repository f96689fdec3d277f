"""Does the cost model order plans as the GPU does? Plans timed on an H100 (the same kernel with
different plans: 5775617's at batch 1, e2fe051's at batch 8, context 512; docs/experiments.md,
"Cost model against measured plans") against the model's full-schedule predictions, with the cost
constants as they are or changed one at a time. CPU only:

    python -m benchmarks.model_check          (the constants as committed)
    python -m benchmarks.model_check sweep    (one constant at a time)
"""
import dataclasses
import itertools
import sys

import ada_mk.search.cost as cost
from ada_mk.search.kernel_rules import tiled_weights
from ada_mk.search.plan import LinearTiling
from ada_mk.search.search import Candidate, Searcher
from tests.gpu.kernels import model_for

P1 = {"qkv": (3072, 2048, 24, 1, 1), "o": (2048, 2048, 16, 1, 1), "gate_up": (16384, 2048, 128, 1, 1),
      "down": (2048, 8192, 64, 4, 1), "lm_head": (128256, 2048, 256, 1, 1)}
P8 = {"qkv": (6144, 4096, 48, 1, 2), "o": (4096, 4096, 32, 1, 2), "gate_up": (28672, 4096, 32, 1, 2),
      "down": (4096, 14336, 16, 1, 8), "lm_head": (128256, 4096, 48, 1, 2)}
# The searched batch-8 plans at e2fe051 (16-row batched chunks: warps_per_row cuts a row group's columns).
B1 = {"qkv": (3072, 2048, 32, 1, 2), "o": (2048, 2048, 16, 1, 2), "gate_up": (16384, 2048, 64, 1, 2),
      "down": (2048, 8192, 64, 4, 2), "lm_head": (128256, 2048, 256, 1, 2)}
B8 = {"qkv": (6144, 4096, 48, 1, 4), "o": (4096, 4096, 32, 1, 4), "gate_up": (28672, 4096, 32, 1, 4),
      "down": (4096, 14336, 128, 4, 4), "lm_head": (128256, 4096, 256, 1, 4)}
# (config, batch, tilings, attention splits, ring depth, measured ms/token on an H100: batch 1 with
# 5775617's kernel, batch 8 with e2fe051's, the mean of the rounds)
MEASURED = [
    ("llama3.2-1b", 1, P1, 8, 6, 1.160),
    ("llama3.2-1b", 1, {**P1, "down": (2048, 8192, 16, 1, 4), "lm_head": (128256, 2048, 128, 1, 1)}, 16, 6, 1.228),
    ("llama3.2-1b", 1, {**P1, "down": (2048, 8192, 16, 1, 4)}, 8, 6, 1.180),
    ("llama3.2-1b", 1, {**P1, "lm_head": (128256, 2048, 128, 1, 1)}, 8, 6, 1.164),
    ("llama3.2-1b", 1, P1, 16, 6, 1.158),
    ("llama3-8b", 1, P8, 16, 5, 5.94),
    ("llama3-8b", 1, {**P8, "gate_up": (28672, 4096, 24, 1, 2), "down": (4096, 14336, 64, 4, 2),
                      "lm_head": (128256, 4096, 32, 1, 2)}, 6, 6, 6.075),
    ("llama3.2-1b", 8, B1, 2, 5, 1.575),
    ("llama3.2-1b", 8, B1, 2, 3, 1.571),
    ("llama3.2-1b", 8, B1, 1, 5, 1.622),
    ("llama3.2-1b", 8, B1, 4, 5, 1.613),
    ("llama3.2-1b", 8, {**B1, "o": (2048, 2048, 64, 4, 1)}, 2, 5, 1.569),
    ("llama3.2-1b", 8, {**B1, "o": (2048, 2048, 128, 8, 1)}, 2, 5, 1.659),
    ("llama3.2-1b", 8, {**B1, "lm_head": (128256, 2048, 128, 1, 2)}, 2, 5, 1.596),
    ("llama3-8b", 8, B8, 2, 3, 7.465),
    ("llama3-8b", 8, B8, 2, 2, 7.925),
    ("llama3-8b", 8, B8, 1, 3, 7.575),
    ("llama3-8b", 8, B8, 4, 3, 7.670),
    ("llama3-8b", 8, {**B8, "o": (4096, 4096, 128, 4, 1)}, 2, 3, 7.701),
    ("llama3-8b", 8, {**B8, "o": (4096, 4096, 256, 8, 1)}, 2, 3, 7.988),
    ("llama3-8b", 8, {**B8, "qkv": (6144, 4096, 96, 2, 2)}, 2, 3, 7.480),
    ("llama3-8b", 8, {**B8, "lm_head": (128256, 4096, 128, 1, 4)}, 2, 3, 7.425),
]


def predicted_ms(changes: dict) -> list[float]:
    """The model's step time for every measured plan, with some H100 constants changed."""
    base = cost.COSTS["H100"]
    cost.COSTS["H100"] = dataclasses.replace(base, **changes)
    try:
        out = []
        for config, batch, tilings, splits, stages, _ in MEASURED:
            m, d = model_for(config, "H100", batch, None)
            cand = Candidate({k: LinearTiling(*v, batch > 1, tiled_weights(d)) for k, v in tilings.items()}, splits, stages)
            out.append(Searcher(m, d).full(cand)[0].time * 1e3)
        return out
    finally:
        cost.COSTS["H100"] = base


def ordered(pred: list[float]) -> tuple[int, int]:
    """Pairs of plans of one model and batch, measured more than 1% apart, that the model orders right."""
    ok = total = 0
    for i, j in itertools.combinations(range(len(MEASURED)), 2):
        mi, mj = MEASURED[i][5], MEASURED[j][5]
        if MEASURED[i][:2] != MEASURED[j][:2] or abs(mi - mj) < 0.01 * mi:
            continue
        total += 1
        ok += (pred[i] < pred[j]) == (mi < mj)
    return ok, total


def report(label: str, changes: dict) -> None:
    pred = predicted_ms(changes)
    ok, total = ordered(pred)
    print(f"{label:34s} ordered {ok}/{total}  predicted " + " ".join(f"{p:.3f}" for p in pred), flush=True)


if __name__ == "__main__":
    print("measured" + " " * 37 + " ".join(f"{m[5]:.3f}" for m in MEASURED))
    report("as committed", {})
    if sys.argv[1:] == ["sweep"]:
        c = cost.COSTS["H100"]
        for name, values in (("task_overhead_s", (1e-6, 2e-6, 3e-6)), ("stage_fixed_s", (1e-6, 2.5e-6, 3.5e-6)),
                             ("l2_bw_per_sm", (c.l2_bw_per_sm / 2, c.l2_bw_per_sm / 4)),
                             ("attn_fixed_s", (1e-6, 4e-6)), ("sync_latency_s", (0.8e-6, 1.5e-6)),
                             ("stream_efficiency", (0.7, 0.8, 0.9))):
            for v in values:
                report(f"{name} = {v:.3g}", {name: v})
