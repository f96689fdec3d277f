"""Where the time of a decode step goes, by removal: the same kernel built without its counter
waits, without its input staging, without its multiply (weights still stream through the ring),
and combinations, each timed the same way in one run. The outputs of the ablated builds are wrong
by design (adamk/tasks.cuh, ADAMK_ABLATE_*); only their speed means something. Also the searched
plan's tilings with other attention splits (correct kernels), to check the cost model's choice.

    ADAMK_CACHE=.devbuild python -m benchmarks.ablation prebuild     (here)
    python3 -m benchmarks.ablation                                    (on the GPU machine)
(both with the same ADAMK_CASES / ADAMK_VARIANTS / ADAMK_SPLITS, if set; ADAMK_CONTEXT times
another context than 512)
"""
import os
import sys

from benchmarks.timing import cases_from_env, gpu_from_env
from tests.gpu.kernels import kernel_for

# ADAMK_CASES picks other (config, batch) pairs, ADAMK_GPU the plans' GPU (benchmarks/timing.py; H100).
CASES = [(config, gpu_from_env(), batch) for config, batch in cases_from_env()]
CONTEXT = int(os.environ.get("ADAMK_CONTEXT", "512"))
MAX_CONTEXT = max(1024, CONTEXT + 256)  # the KV cache: the context, plus the timed steps
# (label, ablation macros, attention splits (None: the searched plan's), scratch kept in L2)
VARIANTS = [
    ("full kernel", (), None, True),
    ("full kernel, scratch not pinned in L2", (), None, False),
    ("no staging", ("ADAMK_ABLATE_STAGING",), None, True),
    ("no waits", ("ADAMK_ABLATE_WAITS",), None, True),
    ("no math", ("ADAMK_ABLATE_MATH",), None, True),
    ("no waits, staging, math", ("ADAMK_ABLATE_WAITS", "ADAMK_ABLATE_STAGING", "ADAMK_ABLATE_MATH"), None, True),
    ("no waits, staging, math, attention",
     ("ADAMK_ABLATE_WAITS", "ADAMK_ABLATE_STAGING", "ADAMK_ABLATE_MATH", "ADAMK_ABLATE_ATTENTION"), None, True),
    ("searched tilings, 8 attention splits", (), 8, True),
    ("counters bumped without release", ("ADAMK_ABLATE_RELEASE",), None, True),
    ("waits unbounded (no time limit)", ("ADAMK_UNBOUNDED_WAITS",), None, True),  # a correct kernel
]
# ADAMK_VARIANTS="full kernel|no math|..." keeps only those labels; ADAMK_SPLITS="16,32" adds split counts.
if os.environ.get("ADAMK_VARIANTS"):
    VARIANTS = [v for v in VARIANTS if v[0] in os.environ["ADAMK_VARIANTS"].split("|")]
VARIANTS += [(f"searched tilings, {n} attention splits", (), int(n), True)
             for n in os.environ.get("ADAMK_SPLITS", "").split(",") if n]


def with_splits(config: str, gpu: str, batch: int, splits: int, profile: bool = False):
    """The searched plan's tilings with `splits` attention splits, scheduled by the search."""
    from ada_mk.codegen.build import build
    from ada_mk.codegen.render import render
    from ada_mk.search.search import Searcher
    from ada_mk.search.planner import make_plan
    from tests.gpu.kernels import model_for

    m, d = model_for(config, gpu, batch, None, MAX_CONTEXT)
    s = Searcher(m, d)
    searched = make_plan(m, d)
    _, plan = s.with_splits(searched.tilings, splits)
    return plan, build(render(plan), ["sm_90a"], library=False, profile=profile)


def time_variant(config: str, gpu: str, batch: int, defines: tuple[str, ...], splits: int | None = None,
                 l2: bool = True) -> float:
    from benchmarks.timing import kernel_ms_per_token

    plan, art = kernel_for(config, gpu, batch, defines=defines, max_context=MAX_CONTEXT) if splits is None else \
        with_splits(config, gpu, batch, splits)
    return kernel_ms_per_token(plan, art.fatbin, CONTEXT, l2_scratch=l2)


if __name__ == "__main__":
    for config, gpu, batch in CASES:
        for label, defines, splits, l2 in VARIANTS:
            if sys.argv[1:] == ["prebuild"]:
                kernel_for(config, gpu, batch, defines=defines, max_context=MAX_CONTEXT) if splits is None \
                    else with_splits(config, gpu, batch, splits)
                continue
            ms = time_variant(config, gpu, batch, defines, splits, l2)
            print(f"{config} bs{batch} ctx{CONTEXT}: {label:40s} {ms:.3f} ms/token", flush=True)
