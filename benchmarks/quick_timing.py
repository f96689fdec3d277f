"""Decode ms/token of the MegaKernel at a given context (chained steps, CUDA events), with the
bytes it must read, for a first look before adamk-bench exists.

    python3 -m benchmarks.quick_timing   (on the GPU machine, ADAMK_CACHE pointing at prebuilt kernels)
"""
from ada_mk.search.layout import make_layout
from benchmarks.timing import ms_per_token, random_engine
from tests.gpu.kernels import kernel_for

CASES = [("llama3.2-1b", "H100", 1), ("llama3-8b", "H100", 1), ("llama3.2-1b", "L20", 1)]
CONTEXT = 512

if __name__ == "__main__":
    for config, gpu, batch in CASES:
        plan, art = kernel_for(config, gpu, batch)
        layout = make_layout(plan)
        eng = random_engine(plan, art.fatbin)
        ms = ms_per_token(eng, CONTEXT, steps=64)
        m = plan.model
        kv = 2 * m.num_hidden_layers * batch * m.num_key_value_heads * m.head_dim * CONTEXT * 2
        weights = layout.weights.total_bytes - (0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size * 2)
        gbs = (weights + kv) / ms / 1e6
        print(f"{plan.kernel_name}: {ms:.3f} ms/token at context {CONTEXT}, {gbs:.0f} GB/s")
        eng.close()
