"""A few decode steps of a 2-layer SmolLM2-135M-shaped kernel (batch 1 and 4), random weights,
for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck python3 -m tests.gpu.sanitize_run
"""
import numpy as np

from ada_mk.runtime.engine import MegaKernelEngine
from ada_mk.search.layout import make_layout
from tests.gpu.kernels import kernel_for

if __name__ == "__main__":
    rng = np.random.default_rng()
    for batch in (1, 4):
        plan, art = kernel_for("smollm2-135m", "H100", batch, 2)
        layout = make_layout(plan)
        packed = (rng.standard_normal(layout.weights.total, np.float32) * 0.05).view(np.uint32) >> 16
        eng = MegaKernelEngine(plan, art.fatbin, wait_limit_ms=60_000.0)  # the tools slow a step 100-1000x
        eng.load_packed(packed.astype(np.uint16))
        tok = rng.integers(0, plan.model.vocab_size, batch).astype(np.int32)
        for t in range(3):
            tok, logits = eng.step(tok, np.full(batch, t, np.int32), want_logits=True)
            assert np.isfinite(logits).all()
        eng.close()
        print(f"batch {batch}: 3 steps ok, tokens {tok.tolist()}")
