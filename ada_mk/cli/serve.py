"""`adamk-serve`: an OpenAI-compatible server over the MegaKernel, continuous batching over its
B slots.

    adamk-serve --weights SmolLM2-135M-Instruct.Q4_1.gguf --batch 8 --port 8000
    adamk-serve --weights model.gguf --backend reference --batch 2 --max-context 512   # CPU

Loads the checkpoint once, builds and loads the kernel for batch B (or the NumPy reference
executor), warms up, then serves /v1/completions, /v1/chat/completions, /v1/models, /health and
/metrics until SIGTERM or SIGINT, which drain: no new requests, the accepted ones finish, exit 0.
Errors before serving are one line, exit status 2.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import click

from ..config import ConfigError, deploy_for, resolve_weights
from ..serve.scheduler import DEFAULT_PREFILL_CHUNK
from .common import command, fail_as, one_line, say, weights_options

PROG = "adamk-serve"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


@command(PROG)
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path),
              help="A GGUF file, or an HF folder (config.json + *.safetensors, tokenizer.json).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Model config (configs/*.yaml or an HF config.json); default: the checkpoint's own.")
@click.option("--backend", type=click.Choice(["kernel", "reference"]), default="kernel", show_default=True,
              help="kernel: the MegaKernel on the GPU; reference: the NumPy reference executor (CPU, slow).")
@click.option("--batch", type=int, default=None, help="Slots: sequences decoded at once. [default: the config's, else 1]")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--max-context", type=click.IntRange(1), default=None,
              help="KV cache length per slot (prompt + generated). [default: min(4096, max_position_embeddings)]")
@click.option("--gpu", default=None, help="GPU to generate the kernel for. [default: this machine's, else H100]")
@weights_options()
@click.option("--prefill", "prefill_mode", type=click.Choice(["auto", "torch", "kernel"]), default="auto",
              show_default=True, help="kernel backend: torch (hybrid, one slot's cache at once) or kernel "
                                      "(prompt tokens through the decode steps).")
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
              help="Requests that may wait for a slot; more are answered 503.")
@click.option("--prefills-per-step", type=click.IntRange(1), default=1, show_default=True,
              help="Prefill chunks run between two decode steps (bulk prefill).")
@click.option("--prefill-chunk", type=click.IntRange(1), default=DEFAULT_PREFILL_CHUNK, show_default=True,
              help="Prompt tokens per prefill chunk: a long prompt is prefilled a chunk per decode step, "
                   "so running streams wait for one chunk at most.")
@click.option("--model-name", default=None, help="The model id /v1/models reports. [default: the config's name]")
@click.option("-v", "--verbose", is_flag=True, help="Log the build steps and every HTTP request.")
def main(weights_path: Path, config_path: Path | None, backend: str, batch: int | None, port: int, host: str,
         max_context: int | None, gpu: str | None, weights: str | None, weights_group: int | None,
         prefill_mode: str, max_queue: int, prefills_per_step: int, prefill_chunk: int, model_name: str | None,
         verbose: bool) -> None:
    """Serve the checkpoint --weights through the OpenAI HTTP API, B requests decoding at once.

    \b
    Examples:
      adamk-serve --weights SmolLM2-135M-Instruct.Q4_1.gguf --batch 8 --port 8000
      adamk-serve --weights model.gguf --backend reference --batch 2 --max-context 512
    """
    from ..checkpoints.errors import CheckpointError
    from ..codegen.build import BuildError
    from ..runtime.engine import KernelError
    from ..search.errors import PlanError

    try:
        server = _start(weights_path, config_path, backend, batch, port, host, max_context, gpu, weights,
                        weights_group, prefill_mode, max_queue, prefills_per_step, prefill_chunk, model_name, verbose)
    except (CheckpointError, ConfigError, BuildError, KernelError, PlanError, ValueError) as e:
        fail(one_line(str(e)) or type(e).__name__)
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if server.scheduler.error is not None:
            log(f"error: generation failed: {one_line(str(server.scheduler.error))}")
            server.shutdown(5.0)
            raise SystemExit(1)
    busy = server.scheduler.busy()
    log(f"draining: {busy} request{'s' if busy != 1 else ''} in flight")
    server.shutdown()
    log("stopped")


def _start(weights_path: Path, config_path: Path | None, backend: str, batch: int | None, port: int, host: str,
           max_context: int | None, gpu: str | None, weights_format: str | None, weights_group: int | None,
           prefill_mode: str, max_queue: int, prefills_per_step: int, prefill_chunk: int, model_name: str | None,
           verbose: bool):
    from ..checkpoints import load_checkpoint
    from ..config import load_config
    from ..serve.server import OpenAIServer, ids_of_warmup, warm_up

    t0 = time.perf_counter()
    model = base = None
    if config_path is not None:
        model, base = load_config(config_path)
    resolve_weights(weights_format, weights_group, base=base)  # bad flags fail before the checkpoint loads
    ck = load_checkpoint(weights_path, model)
    model = ck.model
    tok = ck.tokenizer()
    deploy = deploy_for(model, gpu, batch, max_context, base, weights=weights_format, weights_group=weights_group)
    if backend == "reference":
        from ..runtime.slots import ReferenceSlots

        slots = ReferenceSlots(model, {k: ck.weights[k] for k in ck.weights}, deploy.batch, deploy.max_context)
    else:
        from ..runtime.slots import KernelSlots

        slots = KernelSlots(model, deploy, ck.weights, prefill_mode, log if verbose else None, quantized=ck.quantized)
    loaded = time.perf_counter() - t0
    warm = warm_up(slots, ids_of_warmup(tok, model.vocab_size))
    try:
        server = OpenAIServer(slots, tok, model_name or model.name, host=host, port=port, max_queue=max_queue,
                              prefills_per_step=prefills_per_step, prefill_chunk=prefill_chunk,
                              log=log if verbose else None)
    except OSError as e:
        slots.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}", field="--port") from None
    server.start()
    log(f"{model.name} on {slots.name}: {deploy.batch} slots of {deploy.max_context} tokens; loaded in {loaded:.1f} s, "
        f"warmed up in {warm:.2f} s")
    log(f"serving the OpenAI API on http://{server.host}:{server.port}/v1 (SIGTERM or Ctrl-C drains and stops)")
    return server


if __name__ == "__main__":
    sys.exit(main())
