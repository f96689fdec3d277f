"""`adamk-run`: generate text from a real checkpoint with the MegaKernel.

    adamk-run --weights SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" -n 32
    adamk-run --weights ckpt/ --prompt "Tell me a joke" --chat --temperature 0.7 --top-p 0.9 --seed 1
    adamk-run --weights model.gguf --prompt "..." --cpu-reference      # NumPy reference, no GPU

The kernel for (model, GPU, batch 1) is planned, rendered and built into the build cache on first
use; the weights are packed into its layout; the prompt is prefilled (by default the hybrid way:
batched PyTorch writing the kernel's KV cache; `--prefill kernel` feeds it token by token through
the MegaKernel); then decoding streams text to stdout. Greedy by default (the kernel's argmax);
with --temperature > 0 the next token is sampled on the host from the logits (top-k, top-p).
Time to first token and decode ms/token go to stderr. Errors are one line, exit status 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from functools import partial
from typing import Any, Callable

import click
import numpy as np

from .cli import fail_as, say
from .config import ConfigError, DeployConfig, ModelConfig

PROG = "adamk-run"
DEFAULT_GPU = "H100"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


# ------------------------------------------------------------------------------------ pieces
def detect_gpu() -> str | None:
    """The name of CUDA device 0 ("NVIDIA H100 80GB HBM3"), or None without a GPU/driver."""
    try:
        from cuda.bindings import driver

        if driver.cuInit(0)[0] != driver.CUresult.CUDA_SUCCESS:
            return None
        err, dev = driver.cuDeviceGet(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return None
        err, name = driver.cuDeviceGetName(64, dev)
        return name.split(b"\0", 1)[0].decode() if err == driver.CUresult.CUDA_SUCCESS else None
    except Exception:  # noqa: BLE001 - no driver: cuda-python raises loader errors of its own
        return None


def deploy_for(model: ModelConfig, gpu: str | None, batch: int | None, max_context: int | None,
               base: DeployConfig | None = None) -> DeployConfig:
    """A DeployConfig from flags, then `base` (a config file's deploy section), then defaults:
    the GPU this machine has (else H100), batch 1, min(4096, max_position_embeddings)."""
    from .config.gpus import find_gpu, lookup_gpu

    if gpu is not None:
        spec = lookup_gpu(gpu)
    elif base is not None:
        spec = base.gpu
    else:
        found = detect_gpu()
        spec = (find_gpu(found) if found else None) or lookup_gpu(DEFAULT_GPU)
    batch = batch if batch is not None else (base.batch if base is not None else 1)
    ctx = max_context if max_context is not None else (
        base.max_context if base is not None else min(4096, model.max_position_embeddings))
    if not 1 <= batch <= 8:
        raise ConfigError("must be in 1..8", field="--batch", value=batch)
    if not 1 <= ctx <= model.max_position_embeddings:
        raise ConfigError(f"must be in 1..max_position_embeddings ({model.max_position_embeddings})",
                          field="--max-context", value=ctx)
    return DeployConfig(gpu=spec, batch=batch, max_context=ctx)


def sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """One token from logits [V]: greedy at temperature 0, else softmax(logits / T) restricted to
    the top_k most likely (0: all) and to the smallest set whose mass reaches top_p."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


class Stats:
    def __init__(self) -> None:
        self.load_s = self.ttft_s = 0.0
        self.decode_s: list[float] = []
        self.prompt_tokens = 0


def generate(step_logits: Callable[[int, int], tuple[int, np.ndarray | None]], prefill: Callable[[list[int]], tuple[int, np.ndarray | None]],
             prompt: list[int], n: int, *, temperature: float, top_k: int, top_p: float, seed: int | None,
             stop_ids: list[int], on_token: Callable[[int], None], stats: Stats) -> list[int]:
    """Prefill, then up to n tokens; stops after a stop token. `prefill(prompt)` and
    `step_logits(token, position)` return (greedy next token, logits or None)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    greedy, logits = prefill(prompt)
    tok = greedy if temperature <= 0 else sample(logits, temperature, top_k, top_p, rng)
    stats.ttft_s = time.perf_counter() - t0
    out = [tok]
    on_token(tok)
    pos = len(prompt)
    while len(out) < n and tok not in stop_ids:
        t = time.perf_counter()
        greedy, logits = step_logits(tok, pos)
        tok = greedy if temperature <= 0 else sample(logits, temperature, top_k, top_p, rng)
        stats.decode_s.append(time.perf_counter() - t)
        out.append(tok)
        on_token(tok)
        pos += 1
    return out


# ------------------------------------------------------------------------------------ backends
def reference_backend(model: ModelConfig, weights: Any, context: int, want_logits: bool):
    from .ir.reference import ReferenceExecutor

    ex = ReferenceExecutor(model, weights, 1, context)

    def step(tok: int, pos: int):
        lg = ex.step(np.array([tok]), np.array([pos]))[0]
        return int(np.argmax(lg)), lg

    def prefill(prompt: list[int]):
        lg = ex.prefill(np.asarray(prompt)[None])[0]
        return int(np.argmax(lg)), lg

    return prefill, step, lambda: None


def kernel_backend(model: ModelConfig, deploy: DeployConfig, weights: Any, prefill_mode: str, want_logits: bool,
                   verbose: bool):
    from .codegen.build import build
    from .codegen.render import render
    from .runtime.engine import MegaKernelEngine
    from .search.planner import make_plan

    plan = make_plan(model, deploy)
    art = build(render(plan), [deploy.gpu.nvcc_arch], library=False, log=log if verbose else None)
    engine = MegaKernelEngine(plan, art.fatbin)
    engine.load_weights(weights)
    if prefill_mode == "auto":
        try:
            import torch

            prefill_mode = "torch" if torch.cuda.is_available() else "kernel"
        except ImportError:
            prefill_mode = "kernel"
    hybrid = None
    if prefill_mode == "torch":
        from .runtime.hybrid import HybridPrefill

        hybrid = HybridPrefill(engine)

    def step(tok: int, pos: int):
        r = engine.step(np.array([tok], np.int32), np.array([pos], np.int32), want_logits=want_logits)
        return (int(r[0][0]), r[1][0]) if want_logits else (int(r[0]), None)

    def prefill(prompt: list[int]):
        if hybrid is not None:
            nxt, lg = hybrid.prefill(np.asarray(prompt, np.int32)[None])
            return int(nxt[0]), lg[0]
        r = None
        for t, tok in enumerate(prompt):
            r = step(tok, t)
        return r

    return prefill, step, engine.close, plan, prefill_mode


# ------------------------------------------------------------------------------------ CLI
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path),
              help="A GGUF file, or an HF folder (config.json + *.safetensors, tokenizer.json).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Model config (configs/*.yaml or an HF config.json); default: the checkpoint's own.")
@click.option("--prompt", required=True, help="The prompt text.")
@click.option("-n", "--max-new-tokens", "n", type=click.IntRange(1), default=64, show_default=True,
              help="Tokens to generate (fewer if an end-of-sequence token comes first).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the checkpoint's chat template.")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0: greedy (the kernel's argmax); > 0: sample from softmax(logits / T).")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Sample among the k most likely (0: all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sample from the smallest set of tokens whose probability reaches p.")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--gpu", default=None, help="GPU to generate the kernel for. [default: this machine's, else H100]")
@click.option("--max-context", type=click.IntRange(1), default=None,
              help="KV cache length of the kernel. [default: min(4096, max_position_embeddings)]")
@click.option("--prefill", "prefill_mode", type=click.Choice(["auto", "torch", "kernel"]), default="auto",
              show_default=True, help="torch: batched PyTorch prefill (hybrid); kernel: token by token.")
@click.option("--cpu-reference", is_flag=True, help="Run the NumPy reference executor instead of the GPU.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at the end-of-sequence token.")
@click.option("--print-ids", is_flag=True, help="Also print the generated token ids (stderr).")
@click.option("-v", "--verbose", is_flag=True, help="Log the build steps.")
def main(weights_path: Path, config_path: Path | None, prompt: str, n: int, chat: bool, temperature: float,
         top_k: int, top_p: float, seed: int | None, gpu: str | None, max_context: int | None, prefill_mode: str,
         cpu_reference: bool, ignore_eos: bool, print_ids: bool, verbose: bool) -> None:
    """Generate text from WEIGHTS with the MegaKernel, streaming it to stdout."""
    from .checkpoints.errors import CheckpointError

    errors: tuple[type[BaseException], ...] = (CheckpointError, ConfigError)
    try:
        from .codegen.build import BuildError
        from .runtime.engine import KernelError
        from .search.errors import PlanError

        errors += (BuildError, KernelError, PlanError)
    except ImportError:  # pragma: no cover
        pass
    try:
        _run(weights_path, config_path, prompt, n, chat, temperature, top_k, top_p, seed, gpu, max_context,
             prefill_mode, cpu_reference, ignore_eos, print_ids, verbose)
    except errors as e:
        fail(" ".join(str(e).split()) or type(e).__name__)
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")


def _run(weights_path, config_path, prompt, n, chat, temperature, top_k, top_p, seed, gpu, max_context,
         prefill_mode, cpu_reference, ignore_eos, print_ids, verbose) -> None:
    from .checkpoints import load_checkpoint
    from .config import load_config

    t_load = time.perf_counter()
    model = base = None
    if config_path is not None:
        model, base = load_config(config_path)
    ck = load_checkpoint(weights_path, model)
    model = ck.model
    tok = ck.tokenizer()
    text = tok.apply_chat_template(prompt) if chat else prompt
    ids = tok.encode(text)
    if not ids:
        fail("the prompt encodes to no tokens")
    deploy = deploy_for(model, gpu, None, max_context, base)
    if len(ids) + n > deploy.max_context:
        raise ConfigError(f"prompt ({len(ids)} tokens) + {n} new tokens exceed the KV cache "
                          f"({deploy.max_context}); raise --max-context or lower -n", field="--max-context")
    want_logits = temperature > 0
    stats = Stats()
    stats.prompt_tokens = len(ids)
    if cpu_reference:
        weights = {k: ck.weights[k] for k in ck.weights}
        prefill, step, close = reference_backend(model, weights, len(ids) + n, want_logits)
        where = "NumPy reference (CPU)"
    else:
        prefill, step, close, plan, mode = kernel_backend(model, deploy, ck.weights, prefill_mode, want_logits, verbose)
        where = f"{plan.kernel_name} on {detect_gpu() or deploy.gpu.name}, prefill: {mode}"
    stats.load_s = time.perf_counter() - t_load
    log(f"{model.name}: {len(ids)} prompt tokens; {where}; loaded in {stats.load_s:.1f} s")

    stream = tok.stream()
    stop = [] if ignore_eos else tok.eos_token_ids

    def on_token(t: int) -> None:
        if t in stop:
            return
        piece = stream.push(t)
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()

    try:
        out = generate(step, prefill, ids, n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       stop_ids=stop, on_token=on_token, stats=stats)
    finally:
        close()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if print_ids:
        log(f"ids: {' '.join(map(str, out))}")
    per = 1e3 * float(np.median(stats.decode_s)) if stats.decode_s else float("nan")
    log(f"time to first token {stats.ttft_s * 1e3:.1f} ms ({len(ids)} prompt tokens); decode "
        f"{per:.3f} ms/token (median of {len(stats.decode_s)}); {len(out)} tokens generated")


if __name__ == "__main__":
    main()
