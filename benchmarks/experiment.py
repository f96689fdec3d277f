"""Kernel variants on fixed plans, timed in one run: which change moved the step time. A plan is
the searched plan, or the plan of the previous commit (its tilings, attention splits and ring
depth, scheduled by today's search), so that kernel changes and plan changes separate. Plans are
made for ADAMK_GPU (default H100).

    ADAMK_CACHE=.devbuild python -m benchmarks.experiment prebuild    (here)
    python3 -m benchmarks.experiment                                   (on the GPU machine)
"""
import dataclasses
import os
import sys

from ada_mk.search.kernel_rules import tiled_weights
from ada_mk.search.plan import LinearTiling

CONTEXT = int(os.environ.get("ADAMK_CONTEXT", "512"))  # timed context; the KV cache holds 256 more
MAX_CONTEXT = max(1024, CONTEXT + 256)
# The previous commit's (dba3840) H100 plans.
PREVIOUS = {
    "llama3.2-1b": ({"qkv": (3072, 2048, 24, 1, 1), "o": (2048, 2048, 16, 1, 1), "gate_up": (16384, 2048, 128, 1, 1),
                     "down": (2048, 8192, 64, 4, 1), "lm_head": (128256, 2048, 256, 1, 1)}, 8, 6),
    "llama3-8b": ({"qkv": (6144, 4096, 48, 1, 2), "o": (4096, 4096, 32, 1, 2), "gate_up": (28672, 4096, 32, 1, 2),
                   "down": (4096, 14336, 16, 1, 8), "lm_head": (128256, 4096, 48, 1, 2)}, 16, 5),
}
# Batch 8 plans to hold against the search's: every stage in 8-row chunks (the batched multiply's
# full MMA width), K-split where that keeps the ring slot at 32 KB; the LM head (never K-split)
# in 4-row chunks.
EIGHT_ROW = {
    "llama3-8b": ({"qkv": (6144, 4096, 48, 2, 1), "o": (4096, 4096, 32, 2, 1), "gate_up": (28672, 4096, 128, 2, 1),
                   "down": (4096, 14336, 64, 7, 1), "lm_head": (128256, 4096, 48, 1, 2)}, 2, 4),
}
# The previous 1B plan with one of the three differences of the plan the search makes now
# (e86bc3f86e: down unsplit in 2-row chunks, 128-row LM head tiles, 16 attention splits).
_1B = PREVIOUS["llama3.2-1b"][0]
ONE_CHANGE = {
    "down unsplit": {"llama3.2-1b": ({**_1B, "down": (2048, 8192, 16, 1, 4)}, 8, 6)},
    "lm_head 128": {"llama3.2-1b": ({**_1B, "lm_head": (128256, 2048, 128, 1, 1)}, 8, 6)},
    "16 splits": {"llama3.2-1b": (_1B, 16, 6)},
}
# The search's 1B plan (b97beae7da) with smaller gate/up tasks: 128 tasks of 512 KB on 132 SMs
# end over a spread of several us; do finer tasks even it out?
# See docs/experiments.md, "Hand-made plans against the searched ones".
_1B_SEARCHED = {"qkv": (3072, 2048, 24, 1, 1), "o": (2048, 2048, 16, 1, 1), "gate_up": (16384, 2048, 128, 1, 1),
                "down": (2048, 8192, 16, 1, 4), "lm_head": (128256, 2048, 128, 1, 1)}
FINER_GATE_UP = {f"gate_up {r}": {"llama3.2-1b": ({**_1B_SEARCHED, "gate_up": (16384, 2048, r, 1, 1)}, 16, 6)}
                 for r in (64, 32)}
# The same at batch 8 (the search's 0e5fd178cf: 2 attention splits, 5 stages).
_1B_BS8 = {**_1B_SEARCHED, "qkv": (3072, 2048, 48, 2, 1), "down": (2048, 8192, 64, 4, 1)}
FINER_GATE_UP["gate_up 64, batch 8"] = {"llama3.2-1b": ({**_1B_BS8, "gate_up": (16384, 2048, 64, 1, 1)}, 2, 5)}
# The 64-row plan with a shallower ring: does less weight traffic in flight speed up the latency-bound
# stages (QKV, attention, O) more than it slows the streaming ones?
for _n in (5, 4):
    FINER_GATE_UP[f"gate_up 64, {_n} stages"] = {"llama3.2-1b": ({**_1B_SEARCHED, "gate_up": (16384, 2048, 64, 1, 1)}, 16, _n)}
# The 64-row plan with the down projection K-split: a down task waits only for the gate/up rows of
# its K-chunk, so the SMs that finish gate/up first start on chunks already complete.
for _s, _v in ((2, (2048, 8192, 32, 2, 2)), (4, (2048, 8192, 64, 4, 1))):
    FINER_GATE_UP[f"gate_up 64, down split {_s}"] = {
        "llama3.2-1b": ({**_1B_SEARCHED, "gate_up": (16384, 2048, 64, 1, 1), "down": _v}, 16, 6)}
# Batch 8: the searched Llama-3-8B plan (b24375c5ea) rings 3 slots, 64 KB in flight a block; with LM head tiles of 128 rows instead of 256 (the reductions' buffer 4 KB smaller)
# 4 slots fit. 3 slots with the same tiles separate the two changes.
_8B_BS8 = {"qkv": (6144, 4096, 48, 1, 4, True), "o": (4096, 4096, 32, 1, 4, True),
           "gate_up": (28672, 4096, 32, 1, 4, True), "down": (4096, 14336, 128, 4, 4, True),
           "lm_head": (128256, 4096, 128, 1, 4, True)}
DEEP_RING = {f"lm_head 128, {n} stages": {"llama3-8b": (_8B_BS8, 2, n)} for n in (3, 4)}
# With the bulk-copy ring (5d7f7aa; ring rows 64 bytes longer): more bytes in flight a block, by
# half-size chunks (8 warps a row: 16 rows x 512 columns) in 6 slots, or by 64-row LM head and down
# tiles (the reductions' buffer 2 KB smaller) and 4 slots of the searched 32 KB chunks.
DEEP_RING["half chunks, 6 stages"] = {"llama3-8b": ({k: (n, kk, r, s, 8, True) for k, (n, kk, r, s, _, _) in {
    **_8B_BS8, "lm_head": (128256, 4096, 256, 1, 4, True)}.items()}, 2, 6)}
DEEP_RING["64-row down and LM head, 4 stages"] = {"llama3-8b": ({**_8B_BS8, "down": (4096, 14336, 64, 4, 4, True),
                                                                 "lm_head": (128256, 4096, 64, 1, 4, True)}, 2, 4)}
# Batch 8: the QKV task stages (RMSNorm) all 4,096 columns of 8 sequences, 64 KB, on the critical
# path of every layer; K-split 2 or 4 (the same 128 tasks, each twice or four times the rows over
# half or a quarter of the columns) stages less, and attention sums 2 or 4 partials. Searched
# plans 1a28a9e186 and its 1B twin. The search's unsplit QKV is faster (docs/experiments.md,
# "Hand-made plans against the searched ones").
_8B_BS8_S13 = {"qkv": (6144, 4096, 48, 1, 4, True), "o": (4096, 4096, 32, 1, 4, True),
               "gate_up": (28672, 4096, 32, 1, 4, True), "down": (4096, 14336, 128, 4, 4, True),
               "lm_head": (128256, 4096, 256, 1, 4, True)}
_1B_BS8_S13 = {"qkv": (3072, 2048, 32, 1, 2, True), "o": (2048, 2048, 16, 1, 2, True),
               "gate_up": (16384, 2048, 64, 1, 2, True), "down": (2048, 8192, 64, 4, 2, True),
               "lm_head": (128256, 2048, 256, 1, 2, True)}
QKV_SPLIT = {f"qkv split {s}": {"llama3-8b": ({**_8B_BS8_S13, "qkv": (6144, 4096, 48 * s, s, 4, True)}, 2, 3),
                                "llama3.2-1b": ({**_1B_BS8_S13, "qkv": (3072, 2048, 32 * s, s, 2, True)}, 2, 5)}
             for s in (2, 4)}
# With tiled weights (8f7e863: one bulk copy a 32 KB chunk) the batch-8 ring alone streams slower
# than at batch 1, where 4 chunks are in flight a block instead of 2: the same deeper rings again,
# and half chunks in 7 slots (6 in flight, 96 KB). None is faster than the searched 3 slots
# (docs/experiments.md, "Hand-made plans against the searched ones").
DEEP_RING["half chunks, 7 stages"] = {"llama3-8b": (DEEP_RING["half chunks, 6 stages"]["llama3-8b"][0], 2, 7)}
HAND = {"previous": PREVIOUS, "eight-row": EIGHT_ROW, **ONE_CHANGE, **FINER_GATE_UP, **DEEP_RING, **QKV_SPLIT}
# 8-bit weights, batch 1: the searched plans' tilings with some stages re-tiled ((rows, K-split,
# warps per row) by stage; the format and group stay the searched plan's). "bf16 shapes": the tiles
# the bf16 plan streams (48/32/24/64x4/32 rows, 2 warps a row).
RETILED = {
    "bf16 shapes": {"qkv": (48, 1, 2), "o": (32, 1, 2), "gate_up": (24, 1, 2), "down": (64, 4, 2), "lm_head": (32, 1, 2)},
    "gate_up 32": {"gate_up": (32, 1, 1)},
    "2 warps a row": {k: None for k in ("qkv", "o", "gate_up", "down", "lm_head")},  # rows kept, WPR 2
}
# (config, batch, label, macros, plan: "searched" or a HAND key, attention splits instead of the plan's,
# weights format)
VARIANTS = [("llama3-8b", 8, label, (), which, None, "bf16")
            for label, which in (("searched plan (3 slots)", "searched"),
                                 *((w, w) for w in ("lm_head 128, 3 stages", "lm_head 128, 4 stages",
                                                    "64-row down and LM head, 4 stages",
                                                    "half chunks, 6 stages", "half chunks, 7 stages")))]
# ADAMK_EXPERIMENT=q8: where the 8-bit multiply's time goes (docs/experiments.md, "8-bit multiply"):
# the bf16 kernel, then each 8-bit format searched, without its math, decode or group scales, and re-tiled.
if os.environ.get("ADAMK_EXPERIMENT") == "q8":
    VARIANTS = [("llama3-8b", 1, "bf16, searched plan", (), "searched", None, "bf16")]
    for _w in ("fp8", "int8"):
        VARIANTS += [("llama3-8b", 1, f"{_w}, searched plan", (), "searched", None, _w),
                     ("llama3-8b", 1, f"{_w}, no math", ("ADAMK_ABLATE_MATH",), "searched", None, _w),
                     ("llama3-8b", 1, f"{_w}, codes unconverted", ("ADAMK_ABLATE_DECODE",), "searched", None, _w)]
        if _w == "int8":
            VARIANTS += [("llama3-8b", 1, "int8, no group scales", ("ADAMK_ABLATE_SCALES",), "searched", None, _w),
                         ("llama3-8b", 1, "int8, unconverted, no scales", ("ADAMK_ABLATE_DECODE", "ADAMK_ABLATE_SCALES"),
                          "searched", None, _w)]
        VARIANTS += [("llama3-8b", 1, f"{_w}, {r}", (), r, None, _w) for r in RETILED]
# ADAMK_VARIANTS="label|label" keeps only those variants.
if os.environ.get("ADAMK_VARIANTS"):
    VARIANTS = [v for v in VARIANTS if v[2] in os.environ["ADAMK_VARIANTS"].split("|")]


def plan_for(config: str, which: str, splits: int | None = None, batch: int = 1, weights: str = "bf16"):
    from ada_mk.search.search import Candidate, Searcher
    from ada_mk.search.planner import make_plan
    from benchmarks.timing import gpu_from_env
    from tests.gpu.kernels import model_for

    m, d = model_for(config, gpu_from_env(), batch, None, MAX_CONTEXT, weights)
    if which == "searched":
        plan = make_plan(m, d)
        if splits is None:
            return plan
        til, stages = plan.tilings, plan.stages
    elif which in RETILED:
        plan = make_plan(m, d)
        til, stages, splits = dict(plan.tilings), plan.stages, splits or plan.attn_splits
        for kind, shape in RETILED[which].items():
            t = til[kind]
            rows, ksplit, wpr = shape or (t.rows, t.ksplit, 2)
            til[kind] = dataclasses.replace(t, rows=rows, ksplit=ksplit, warps_per_row=wpr)
    else:
        tilings, ns, stages = HAND[which][config]
        til = {k: LinearTiling(*v) for k, v in tilings.items()}
        til = {k: dataclasses.replace(t, tiled=tiled_weights(d)) for k, t in til.items()}
        splits = splits or ns
    _, plan = Searcher(m, d).full(Candidate(dict(til), splits, stages))
    return plan


def kernel(config: str, batch: int, which: str, splits: int | None, defines: tuple[str, ...], weights: str = "bf16"):
    from ada_mk.codegen.build import build
    from ada_mk.codegen.render import render

    plan = plan_for(config, which, splits, batch, weights)
    return plan, build(render(plan), ["sm_90a"], library=False, defines=defines)


if __name__ == "__main__":
    for config, batch, label, defines, which, splits, weights in VARIANTS:
        plan, art = kernel(config, batch, which, splits, defines, weights)
        if sys.argv[1:] == ["prebuild"]:
            continue
        from benchmarks.timing import kernel_ms_per_token

        ms = kernel_ms_per_token(plan, art.fatbin, CONTEXT, l2_scratch=True)
        print(f"{config} bs{batch} ctx{CONTEXT}: {label:45s} {ms:.3f} ms/token ({plan.kernel_name})", flush=True)
