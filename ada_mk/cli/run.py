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
from functools import partial
from pathlib import Path

import click
import numpy as np

from ..config import ConfigError, deploy_for, resolve_weights
from ..config.gpus import detect_gpu
from ..runtime.textgen import Stats, generate, kernel_backend, reference_backend
from .common import command, fail_as, one_line, say, weights_options

PROG = "adamk-run"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


@command(PROG)
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
@weights_options()
@click.option("--prefill", "prefill_mode", type=click.Choice(["auto", "torch", "kernel"]), default="auto",
              show_default=True, help="torch: batched PyTorch prefill (hybrid); kernel: token by token.")
@click.option("--cpu-reference", is_flag=True, help="Run the NumPy reference executor instead of the GPU.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at the end-of-sequence token.")
@click.option("--print-ids", is_flag=True, help="Also print the generated token ids (stderr).")
@click.option("-v", "--verbose", is_flag=True, help="Log the build steps.")
def main(weights_path: Path, config_path: Path | None, prompt: str, n: int, chat: bool, temperature: float,
         top_k: int, top_p: float, seed: int | None, gpu: str | None, max_context: int | None,
         weights: str | None, weights_group: int | None, prefill_mode: str,
         cpu_reference: bool, ignore_eos: bool, print_ids: bool, verbose: bool) -> None:
    """Generate text from the checkpoint --weights with the MegaKernel, streaming it to stdout.

    The kernel for this machine's GPU (batch 1) is built into the build cache on first use.
    Time to first token and decode ms/token go to stderr.

    \b
    Examples:
      adamk-run --weights SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" -n 32
      adamk-run --weights ckpt/ --prompt "Tell me a joke" --chat --temperature 0.7 --top-p 0.9
      adamk-run --weights model.gguf --prompt "..." --cpu-reference   # NumPy reference, no GPU
    """
    from ..checkpoints.errors import CheckpointError
    from ..codegen.build import BuildError
    from ..runtime.engine import KernelError
    from ..search.errors import PlanError

    try:
        _run(weights_path, config_path, prompt, n, chat, temperature, top_k, top_p, seed, gpu, max_context,
             prefill_mode, cpu_reference, ignore_eos, print_ids, verbose, weights_format=weights,
             weights_group=weights_group)
    except (CheckpointError, ConfigError, BuildError, KernelError, PlanError) as e:
        fail(one_line(str(e)) or type(e).__name__)
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")


def _run(weights_path: Path, config_path: Path | None, prompt: str, n: int, chat: bool, temperature: float,
         top_k: int, top_p: float, seed: int | None, gpu: str | None, max_context: int | None, prefill_mode: str,
         cpu_reference: bool, ignore_eos: bool, print_ids: bool, verbose: bool, *,
         weights_format: str | None = None, weights_group: int | None = None) -> None:
    from ..checkpoints import load_checkpoint
    from ..config import load_config

    t_load = time.perf_counter()
    model = base = None
    if config_path is not None:
        model, base = load_config(config_path)
    resolve_weights(weights_format, weights_group, base=base)  # bad flags fail before the checkpoint loads
    ck = load_checkpoint(weights_path, model)
    model = ck.model
    tok = ck.tokenizer()
    text = tok.apply_chat_template(prompt) if chat else prompt
    ids = tok.encode(text)
    if not ids:
        fail("the prompt encodes to no tokens")
    if weights_format == "int4" and weights_group is None and ck.int4:
        weights_group = ck.int4[next(iter(ck.int4))].group  # stream the stored 4-bit matrices as they are
    deploy = deploy_for(model, gpu, None, max_context, base, weights=weights_format, weights_group=weights_group)
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
        prefill, step, close, plan, mode = kernel_backend(model, deploy, ck.weights, prefill_mode, want_logits,
                                                                 log if verbose else None, quantized=ck.quantized,
                                                                 int4=ck.int4)
        where = f"{plan.kernel_name} on {detect_gpu() or deploy.gpu.name}, prefill: {mode}"
    stats.load_s = time.perf_counter() - t_load
    stored8 = ""
    if ck.quantized:
        stored8 = f"; {len(ck.quantized)} 8-bit matrices " + ("dequantized" if cpu_reference or deploy.weights == "bf16"
                                                              else "streamed as stored where their format is the plan's")
    if ck.int4:
        stored8 += f"; {len(ck.int4)} 4-bit matrices " + ("streamed as stored" if deploy.weights == "int4"
                                                          and not cpu_reference else "dequantized")
    log(f"{model.name}: {len(ids)} prompt tokens; {where}{stored8}; loaded in {stats.load_s:.1f} s")

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
    sys.exit(main())
