"""Continuous batching over a SlotBackend's B slots, in one thread that owns the backend.

A request waits in a bounded queue (full: `QueueFull`, HTTP 503) until a slot is free; it takes
the slot at the next iteration. A backend with bulk prefill fills the slot's cache in chunks of
at most `prefill_chunk` prompt tokens, each continuing from the positions the ones before wrote.
Each iteration runs at most `prefills_per_step` chunks (the oldest request's first), then one
decode step of every slot, so a running stream waits for one chunk at most between two of its
tokens, however long the prompts that arrive. While no stream decodes, chunks run back to back
(no step between them: no one's inter-token latency to keep). A slot starts decoding after its
last chunk, whose logits give its first token; until then a step feeds it its next prompt token
at the position the next chunk overwrites. A backend without bulk prefill takes a new prompt
through the steps, a token per step. A slot is freed at an end-of-sequence token, a stop string,
max_tokens, or when its request is cancelled (the client went away). Text goes to the request's
event queue as it is decoded, holding back what could be the start of a stop string.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.slots import SlotBackend
from ..runtime.textgen import sample
from .metrics import Metrics

# Prompt tokens per prefill chunk. A hybrid chunk costs a fixed part (one eager PyTorch pass
# over every layer: its kernel launches and weight reads, several ms) plus a part per token;
# 128 tokens keeps the per-token part at or below the fixed part for models up to about 1B
# parameters, so a running stream's worst gap stays near the smallest one a chunk can give,
# while a 512-token prompt needs only 4 chunks (README, Serving).
DEFAULT_PREFILL_CHUNK = 128


class QueueFull(Exception):
    """The request queue is at its bound."""


class Draining(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class Params:
    """Sampling and stopping of one request (OpenAI's fields)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False


_ids = itertools.count(1)


class Request:
    """One generation. The scheduler puts on `events`: ("text", str) pieces, then one
    ("done", finish_reason) or ("error", message)."""

    def __init__(self, prompt: list[int], params: Params, stream_decoder: Any) -> None:
        self.id = next(_ids)
        self.prompt, self.params = prompt, params
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.arrived = time.perf_counter()
        self.decoder = stream_decoder
        self.rng = np.random.default_rng(params.seed)
        self.out: list[int] = []  # generated tokens (an end-of-sequence token not counted)
        self.text, self.sent = "", 0  # decoded text; how much of it went out
        self.finish_reason: str | None = None
        self.slot = -1
        self.position = 0  # where the token fed next sits
        self.feed = 0  # the token fed next
        self.prompt_left = 0  # prompt tokens still to go through steps (no bulk prefill)
        self.bulk_left = 0  # prompt tokens still to go in bulk-prefill chunks
        self.last_token_at = 0.0
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class Scheduler:
    def __init__(self, backend: SlotBackend, eos_ids: list[int], *, max_queue: int = 64,
                 prefills_per_step: int = 1, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 metrics: Metrics | None = None) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk: expected 1 or more tokens, got {prefill_chunk}")
        self.backend = backend
        self.eos = set(eos_ids)
        self.max_queue, self.prefills_per_step = max_queue, max(1, prefills_per_step)
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or Metrics()
        self.metrics.slots = backend.batch
        self.slots: list[Request | None] = [None] * backend.batch
        self.waiting: deque[Request] = deque()
        self.cond = threading.Condition()
        self.draining = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="adamk-scheduler", daemon=True)

    # ------------------------------------------------------------------------- interface
    def start(self) -> None:
        self.thread.start()

    def submit(self, req: Request) -> None:
        """Queue `req`; raises QueueFull or Draining instead of queueing."""
        with self.cond:
            if self.draining:
                raise Draining("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later")
            self.waiting.append(req)
            self.metrics.queue_depth = len(self.waiting)
            self.cond.notify()

    def drain(self, timeout: float | None = None) -> bool:
        """Take no new requests, finish every accepted one, stop the thread. True when done."""
        with self.cond:
            self.draining = True
            self.cond.notify()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def busy(self) -> int:
        with self.cond:
            return len(self.waiting) + sum(r is not None for r in self.slots)

    # ------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            self.backend.bind_thread()
            while True:
                with self.cond:
                    while not self.waiting and not any(self.slots) and not self.draining:
                        self.cond.wait()
                    if self.draining and not self.waiting and not any(self.slots):
                        return
                self._iteration()
        except BaseException as e:  # noqa: BLE001 - a backend failure ends every request with its message
            self.error = e
            with self.cond:
                pending = [r for r in self.slots if r is not None] + list(self.waiting)
                self.slots = [None] * len(self.slots)
                self.waiting.clear()
                self.draining = True
            for r in pending:
                r.events.put(("error", f"generation failed: {e}"))

    def _iteration(self) -> None:
        for b, r in enumerate(self.slots):
            if r is not None and r.cancelled.is_set():
                self._free(b, "cancelled")
        while True:
            with self.cond:
                free = next((b for b, r in enumerate(self.slots) if r is None), None)
                if free is None or not self.waiting:
                    break
                req = self.waiting.popleft()
                self.metrics.queue_depth = len(self.waiting)
            if req.cancelled.is_set():
                req.finish_reason = "cancelled"
                self.metrics.finished("cancelled")
                continue
            self._admit(free, req)
        self._prefill_chunks()
        if self._stepping():
            self._step()

    def _stepping(self) -> bool:
        """Some slot is advanced by the decode steps (its bulk prefill, if any, done)."""
        return any(r is not None and r.bulk_left == 0 for r in self.slots)

    def _admit(self, b: int, req: Request) -> None:
        if self.backend.bulk_prefill:
            try:
                self.backend.check_prompt(req.prompt)
            except ValueError as e:  # this prompt's fault: it alone fails
                req.finish_reason = "error"
                req.events.put(("error", str(e)))
                return
        req.slot = b
        self.slots[b] = req
        self.metrics.active_slots = sum(r is not None for r in self.slots)
        self.metrics.prompt_tokens += len(req.prompt)
        if self.backend.bulk_prefill:
            req.bulk_left = len(req.prompt)
        else:
            req.feed, req.position, req.prompt_left = req.prompt[0], 0, len(req.prompt) - 1

    def _prefill_chunks(self) -> None:
        """Up to prefills_per_step chunks while a stream decodes; while none does, chunks until
        one does (or no prompt is left to prefill)."""
        done = 0
        while True:
            pending = [r for r in self.slots if r is not None and r.bulk_left > 0]
            if not pending:
                return
            if done >= self.prefills_per_step and self._stepping():
                return
            r = min(pending, key=lambda x: x.id)  # the oldest request: its first token comes soonest
            if r.cancelled.is_set():
                self._free(r.slot, "cancelled")
                continue
            self._chunk(r)
            done += 1

    def _chunk(self, r: Request) -> None:
        """The next chunk of r's prompt into its slot; after the last, r's first token."""
        start = len(r.prompt) - r.bulk_left
        ids = r.prompt[start:start + self.prefill_chunk]
        t = time.perf_counter()
        try:
            greedy, logits = self.backend.prefill_chunk(r.slot, ids, start)
        except ValueError as e:  # this prompt's fault (the backend's checks): it alone fails
            self._free(r.slot, "error", error=str(e))
            return
        self.metrics.prefill.observe(time.perf_counter() - t)
        r.bulk_left -= len(ids)
        if r.bulk_left == 0:
            r.position = len(r.prompt)
            self._accept(r, greedy, logits)

    def _step(self) -> None:
        tokens, positions = self.backend.idle_inputs()
        want_logits = False
        for b, r in enumerate(self.slots):
            if r is None:
                continue
            if r.bulk_left > 0:  # mid-prefill: a position the next chunk overwrites, nothing before it
                at = len(r.prompt) - r.bulk_left
                tokens[b], positions[b] = r.prompt[at], at
                continue
            tokens[b], positions[b] = r.feed, r.position
            want_logits |= r.params.temperature > 0 and r.prompt_left == 0
        t = time.perf_counter()
        nxt, logits = self.backend.step(tokens, positions, want_logits)
        self.metrics.step.observe(time.perf_counter() - t)
        for b, r in enumerate(self.slots):
            if r is None or r.bulk_left > 0:
                continue
            r.position += 1
            if r.prompt_left > 0:  # a prompt going through the steps
                r.feed = r.prompt[len(r.prompt) - r.prompt_left]
                r.prompt_left -= 1
                continue
            self._accept(r, int(nxt[b]), None if logits is None else logits[b])

    # ------------------------------------------------------------------------- tokens
    def _accept(self, r: Request, greedy: int, logits: np.ndarray | None) -> None:
        """The next token of `r` (greedy, or sampled from its logits); text out; maybe finish."""
        p = r.params
        tok = greedy if p.temperature <= 0 else sample(logits, p.temperature, 0, p.top_p, r.rng)
        now = time.perf_counter()
        if r.first_token_at is None:
            r.first_token_at = now
            self.metrics.ttft.observe(now - r.arrived)
        else:
            self.metrics.itl.observe(now - r.last_token_at)
        r.last_token_at = now
        self.metrics.tokens(1)
        if tok in self.eos and not p.ignore_eos:
            return self._finish(r, "stop")
        r.out.append(tok)
        r.feed = tok
        r.text += r.decoder.push(tok)
        cut = _stop_at(r.text, r.sent, p.stop)
        if cut is not None:
            r.text = r.text[:cut]
            return self._finish(r, "stop", flush=False)
        if len(r.out) >= p.max_tokens:
            return self._finish(r, "length")
        if r.position >= self.backend.max_context:
            return self._finish(r, "length")
        safe = len(r.text) - _held_back(r.text, r.sent, p.stop)
        if safe > r.sent:
            r.events.put(("text", r.text[r.sent:safe]))
            r.sent = safe

    def _finish(self, r: Request, reason: str, *, flush: bool = True) -> None:
        if flush:  # no token follows: what the decoder held back goes out too
            r.text += r.decoder.flush()
        if len(r.text) > r.sent:
            r.events.put(("text", r.text[r.sent:]))
            r.sent = len(r.text)
        self._free(r.slot, reason)

    def _free(self, b: int, reason: str, *, error: str | None = None) -> None:
        r = self.slots[b]
        self.slots[b] = None
        self.metrics.active_slots = sum(x is not None for x in self.slots)
        r.finish_reason = reason
        self.metrics.finished(reason)
        r.events.put(("done", reason) if error is None else ("error", error))


def _stop_at(text: str, start: int, stops: list[str]) -> int | None:
    """Where the first stop string in text[start:] begins, or None."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, start: int, stops: list[str]) -> int:
    """How many trailing characters of text[start:] could begin a stop string."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - start), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


__all__ = ["Draining", "Params", "QueueFull", "Request", "Scheduler"]
