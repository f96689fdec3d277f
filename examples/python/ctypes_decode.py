"""Decode through a generated kernel's C ABI from Python with ctypes only (no torch, no
cuda-python): the way another runtime embeds the `.so`.

    # a checkpoint and a prompt (packs the weights for the library's layout, tokenizes, detokenizes)
    python examples/python/ctypes_decode.py --library lib<kernel>.so --weights SmolLM2.gguf \
        --prompt "The capital of France is" -n 16
    # or already packed weights and raw token ids
    python examples/python/ctypes_decode.py --library lib<kernel>.so --packed weights.bin --ids 504 3575 -n 16

Build the library with `adamk-gen --config ...` (or ada_mk.codegen.build.build(..., library=True));
pack weights with `adamk-pack` (`python -m ada_mk.cli.pack` from a checkout).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ada_mk.runtime.capi import SharedLibrary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", required=True, help="lib<kernel>.so")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--packed", help="packed bf16 weights for this kernel (adamk-pack)")
    src.add_argument("--weights", help="a checkpoint (GGUF file or HF folder), packed here")
    prompt = ap.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (needs --weights, for its tokenizer)")
    prompt.add_argument("--ids", type=int, nargs="+", help="prompt token ids")
    ap.add_argument("-n", type=int, default=16, help="tokens to generate")
    ap.add_argument("--device", type=int, default=0)
    a = ap.parse_args(argv)

    lib = SharedLibrary(a.library)
    print(f"{lib.version}: batch {lib.batch}, vocab {lib.vocab_size}, max context {lib.max_context}", file=sys.stderr)
    tok = None
    if a.packed:
        packed = np.fromfile(a.packed, dtype="<u2")
    else:
        from ada_mk.checkpoints import load_checkpoint
        from ada_mk.checkpoints.pack import weights_layout_from_json
        from ada_mk.runtime.weights import pack_weights

        ck = load_checkpoint(a.weights)
        packed = pack_weights(weights_layout_from_json(lib.plan_json()), ck.weights)
        tok = ck.tokenizer() if a.prompt else None
    if a.prompt and tok is None:
        ap.error("--prompt needs --weights (the tokenizer comes from the checkpoint)")
    ids = tok.encode(a.prompt) if tok else list(a.ids)
    if len(ids) + a.n > lib.max_context:
        ap.error(f"prompt + n exceed the library's max context {lib.max_context}")

    B = lib.batch
    with lib.create(packed, device=a.device):
        t0 = time.perf_counter()
        nxt = None
        for t, token in enumerate(ids):  # prefill token by token (the hybrid engine batches this)
            nxt, _ = lib.decode(np.full(B, token), np.full(B, t))
        ttft = time.perf_counter() - t0
        out = [int(nxt[0])]
        t1 = time.perf_counter()
        for i in range(a.n - 1):
            nxt, _ = lib.decode(nxt, np.full(B, len(ids) + i))
            out.append(int(nxt[0]))
        per = (time.perf_counter() - t1) / max(a.n - 1, 1)
    print(" ".join(map(str, out)))
    if tok is not None:
        print(tok.decode(out))
    print(f"time to first token {ttft * 1e3:.1f} ms, {per * 1e3:.3f} ms/token", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
