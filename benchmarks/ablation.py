"""Where the time of a decode step goes, by removal: the same kernel built without its counter
waits, without its input staging, without its multiply (weights still stream through the ring),
and combinations, each timed the same way in one run. The outputs of the ablated builds are wrong
by design (adamk/tasks.cuh, ADAMK_ABLATE_*); only their speed means something. Also the searched
plan's tilings with other attention splits (correct kernels), to check the cost model's choice.

    ADAMK_CACHE=.devbuild python -m benchmarks.ablation prebuild     (here)
    python3 -m benchmarks.ablation                                    (on the GPU machine)
"""
import sys

from tests.gpu.kernels import kernel_for

CASES = [("llama3.2-1b", "H100", 1), ("llama3-8b", "H100", 1)]
CONTEXT = 512
# (label, ablation macros, attention splits (None: the searched plan's), scratch kept in L2)
VARIANTS = [
    ("full kernel", (), None, True),
    ("full kernel, scratch not pinned in L2", (), None, False),
    ("no staging", ("ADAMK_ABLATE_STAGING",), None, True),
    ("no waits", ("ADAMK_ABLATE_WAITS",), None, True),
    ("no math", ("ADAMK_ABLATE_MATH",), None, True),
    ("no waits, staging, math", ("ADAMK_ABLATE_WAITS", "ADAMK_ABLATE_STAGING", "ADAMK_ABLATE_MATH"), None, True),
    ("searched tilings, 8 attention splits", (), 8, True),
]


def with_splits(config: str, gpu: str, batch: int, splits: int):
    """The searched plan's tilings with `splits` attention splits, scheduled by the search."""
    from ada_mk.codegen.build import build
    from ada_mk.codegen.render import render
    from ada_mk.search.search import Searcher
    from ada_mk.search.simple import make_plan
    from tests.gpu.kernels import model_for

    m, d = model_for(config, gpu, batch, None)
    s = Searcher(m, d)
    searched = make_plan(m, d)
    cand = s.trim_stages(s.evaluate(searched.tilings, splits))
    _, plan = s.full(cand)
    return plan, build(render(plan), ["sm_90a"], library=False)


def time_variant(config: str, gpu: str, batch: int, defines: tuple[str, ...], splits: int | None = None,
                 l2: bool = True) -> float:
    from benchmarks.timing import kernel_ms_per_token

    plan, art = kernel_for(config, gpu, batch, defines=defines) if splits is None else \
        with_splits(config, gpu, batch, splits)
    return kernel_ms_per_token(plan, art.fatbin, CONTEXT, l2_scratch=l2)


if __name__ == "__main__":
    for config, gpu, batch in CASES:
        for label, defines, splits, l2 in VARIANTS:
            if sys.argv[1:] == ["prebuild"]:
                kernel_for(config, gpu, batch, defines=defines) if splits is None else with_splits(config, gpu, batch, splits)
                continue
            ms = time_variant(config, gpu, batch, defines, splits, l2)
            print(f"{config} bs{batch} ctx{CONTEXT}: {label:40s} {ms:.3f} ms/token", flush=True)
