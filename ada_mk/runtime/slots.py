"""Batch-slot decoding: B sequences side by side, each in its own KV-cache slot at its own
position, advanced together by one step. What a continuous-batching server drives.

    backend = ReferenceSlots(model, weights, batch=4, max_context=256)   # NumPy, CPU
    backend = KernelSlots(model, deploy, weights)                        # the MegaKernel, GPU
    first, logits = backend.prefill(slot, prompt_ids)       # when backend.bulk_prefill
    first, logits = backend.prefill_chunk(slot, ids, start)  # positions start..start+n-1 of slot
    next_tokens, logits = backend.step(tokens, positions)   # [B] each; logits [B, V] or None

Slot b's K and V live at [layer][b] of the cache and its attention reads only those, so the
slots never see each other. A slot with no sequence is fed IDLE_TOKEN at position 0: that writes
its own position 0 alone, which the next sequence to take the slot overwrites first (its prefill,
or its first prompt token). A bulk prefill may go in chunks: prefill_chunk(slot, ids, start)
writes positions start..start+n-1, attending over the slot's positions 0..start-1 that earlier
chunks wrote, and returns the greedy next token and logits of its last position; prefill(slot,
prompt) is the one chunk from 0. A backend without bulk prefill (the kernel fed token by token)
takes a prompt through step(), one token per step, next to the other slots' decoding.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..config import DeployConfig, ModelConfig

IDLE_TOKEN = 0  # what a free slot is fed, at position 0


class SlotBackend:
    """B slots of one model. `bulk_prefill`: prefill_chunk(slot, ids, start) fills a slot's cache
    a chunk at a time (prefill(slot, prompt): all of it at once); otherwise prompts go through
    step(). Subclasses set batch, max_context, vocab_size."""

    batch: int
    max_context: int
    vocab_size: int
    bulk_prefill: bool = True
    name: str = ""  # where it runs, for the log

    def prefill(self, slot: int, prompt: list[int]) -> tuple[int, np.ndarray]:
        """Prompt (positions 0..T-1) into `slot`'s cache alone: (greedy next token, logits [V])."""
        self.check_prompt(prompt)
        return self.prefill_chunk(slot, prompt, 0)

    def prefill_chunk(self, slot: int, tokens: list[int], start: int) -> tuple[int, np.ndarray]:
        """Tokens at positions start..start+n-1 into `slot`'s cache alone, attending over the
        slot's positions 0..start-1 already there: (greedy next token, logits [V]) of the last."""
        raise NotImplementedError

    def step(self, tokens: np.ndarray, positions: np.ndarray, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One decode step of every slot: slot b's token tokens[b] at position positions[b].
        Returns the greedy next tokens [B] and, when asked for, the logits [B, V] (f32)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def bind_thread(self) -> None:
        """Make the backend usable from the calling thread (the scheduler's own)."""

    def idle_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and positions [B] of a step where no slot holds a sequence."""
        return np.full(self.batch, IDLE_TOKEN, np.int32), np.zeros(self.batch, np.int32)

    def check_prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise ValueError("the prompt encodes to no tokens")
        if len(prompt) > self.max_context:
            raise ValueError(f"prompt of {len(prompt)} tokens: the KV cache holds {self.max_context}")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}); got {bad[:5]}")

    def check_chunk(self, slot: int, tokens: list[int], start: int) -> None:
        if not 0 <= slot < self.batch:
            raise ValueError(f"slot {slot}: expected 0..{self.batch - 1}")
        if not tokens or start < 0 or start + len(tokens) > self.max_context:
            raise ValueError(f"chunk of {len(tokens)} tokens from position {start}: "
                             f"expected 1 or more within the KV cache's {self.max_context} positions")


class ReferenceSlots(SlotBackend):
    """The NumPy reference executor (float32, CPU). A prefill is the prompt's T rows through the
    graph at once (one matrix product per weight), writing that slot's cache alone; a step is
    the B slots' rows. Always returns the logits."""

    def __init__(self, model: ModelConfig, weights: Any, batch: int, max_context: int) -> None:
        from ..ir.reference import ReferenceExecutor

        self.ex = ReferenceExecutor(model, weights, batch, max_context)
        self.batch, self.max_context, self.vocab_size = batch, max_context, model.vocab_size
        self.name = "NumPy reference (CPU)"

    def prefill_chunk(self, slot: int, tokens: list[int], start: int) -> tuple[int, np.ndarray]:
        self.check_chunk(slot, tokens, start)
        T = len(tokens)
        lg = self.ex.run_rows(np.asarray(tokens), np.arange(start, start + T), np.full(T, slot))[-1]
        return int(np.argmax(lg)), lg

    def step(self, tokens: np.ndarray, positions: np.ndarray, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        lg = self.ex.step(tokens, positions)
        return np.argmax(lg, axis=-1).astype(np.int32), lg


class KernelSlots(SlotBackend):
    """The MegaKernel for (model, deploy) with deploy.batch slots, built and loaded as adamk-run
    does. prefill_mode "torch" (hybrid: batched PyTorch writing one slot's cache), "kernel"
    (prompts through step(), a token per step) or "auto" (torch where torch sees a GPU)."""

    def __init__(self, model: ModelConfig, deploy: DeployConfig, weights: Any, prefill_mode: str = "auto",
                 log: Callable[[str], None] | None = None, quantized: Any = None) -> None:
        from .textgen import load_engine, resolve_prefill_mode

        self.engine, self.plan = load_engine(model, deploy, weights, log, quantized)
        self.batch, self.max_context, self.vocab_size = deploy.batch, deploy.max_context, model.vocab_size
        self.prefill_mode = resolve_prefill_mode(prefill_mode)
        self.hybrid = None
        if self.prefill_mode == "torch":
            from .hybrid import HybridPrefill

            self.hybrid = HybridPrefill(self.engine, keep_weights="auto")  # chunk after chunk: convert once
        self.bulk_prefill = self.hybrid is not None
        self.name = f"{self.plan.kernel_name}, prefill: {self.prefill_mode}"

    def prefill_chunk(self, slot: int, tokens: list[int], start: int) -> tuple[int, np.ndarray]:
        if self.hybrid is None:
            raise NotImplementedError("prefill mode 'kernel' feeds prompts through step()")
        self.check_chunk(slot, tokens, start)
        nxt, lg = self.hybrid.prefill(np.asarray(tokens, np.int32), slot=slot, start=start)
        return int(nxt[0]), lg[0]

    def step(self, tokens: np.ndarray, positions: np.ndarray, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        r = self.engine.step(tokens, positions, want_logits=want_logits)
        return (r[0], r[1]) if want_logits else (r, None)

    def bind_thread(self) -> None:
        """The engine's CUDA context (the device's primary one, which torch shares) is current
        per thread: make it current in this one before its driver calls."""
        from .engine import _check, _driver

        _check(_driver().cuCtxSetCurrent(self.engine.context))
        if self.hybrid is not None:
            self.hybrid.torch.cuda.set_device(self.hybrid.device)

    def close(self) -> None:
        self.engine.close()


__all__ = ["IDLE_TOKEN", "KernelSlots", "ReferenceSlots", "SlotBackend"]
