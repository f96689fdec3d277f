"""`adamk-gen`: generate the decode MegaKernel for one (model, GPU, batch).

    adamk-gen --config configs/llama3-8b.yaml --gpu L20 --batch 4

Flow: read the configuration -> build the IR of one decode step -> write
`<out>/<model>/<gpu>-bs<batch>/ir.json` -> hand over to the code generator
(`ada_mk.codegen.pipeline.emit`) when it is installed.

Errors in the user's input are one line on stderr, `adamk-gen: error: ...`, with exit status 2
(the status click uses for usage errors); a traceback means a bug in the generator.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import click

from .config import DTYPES, MAX_BATCH, ConfigError, load_config
from .config.gpus import known_gpus_text
from .fsutil import write_atomic

PROG = "adamk-gen"
EXIT_USAGE = 2
CODEGEN_MODULE = "ada_mk.codegen.pipeline"


def log(msg: str) -> None:
    """A progress line on stderr (stdout is kept for --dump-ir)."""
    click.echo(f"{PROG}: {msg}", err=True)


def fail(msg: str) -> None:
    click.echo(f"{PROG}: error: {msg}", err=True)
    raise SystemExit(EXIT_USAGE)


def _codegen() -> ModuleType | None:
    """The code generator's entry module, or None while it is not written yet. Only the module
    itself being absent counts; an import error inside it is a bug and propagates."""
    try:
        return importlib.import_module(CODEGEN_MODULE)
    except ModuleNotFoundError as e:
        if e.name in (CODEGEN_MODULE, CODEGEN_MODULE.rsplit(".", 1)[0]):
            return None
        raise


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Model config: one of configs/*.yaml, or an HF config.json.")
@click.option("--gpu", default=None, metavar="NAME",
              help=f"Target GPU, overriding the config's deploy.gpu: {known_gpus_text()}. [default: H100]")
@click.option("--batch", type=int, default=None, metavar="N",
              help=f"Sequences decoded together, 1..{MAX_BATCH}. [default: 1]")
@click.option("--max-context", type=int, default=None, metavar="N",
              help="Longest sequence (prompt + generated) the KV cache holds. "
                   "[default: min(4096, max_position_embeddings)]")
@click.option("--dtype", default=None, metavar="DTYPE",
              help=f"Weight/activation dtype: {', '.join(DTYPES)}. [default: bf16]")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="Output root; files go to OUT/<model>/<gpu>-bs<batch>/.")
@click.option("--dump-ir", is_flag=True,
              help="Print the decode-step IR to stdout and exit without writing anything.")
def main(config_path: Path, gpu: str | None, batch: int | None, max_context: int | None,
         dtype: str | None, out_dir: Path, dump_ir: bool) -> None:
    """Generate one CUDA MegaKernel for low-latency decoding of MODEL on GPU at BATCH."""
    try:
        _run(config_path, gpu, batch, max_context, dtype, out_dir, dump_ir)
    except ConfigError as e:
        fail(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}cannot write output: {e.strerror or e}")


def _run(config_path: Path, gpu: str | None, batch: int | None, max_context: int | None,
         dtype: str | None, out_dir: Path, dump_ir: bool) -> None:
    model, deploy = load_config(config_path, gpu=gpu, batch=batch, max_context=max_context, dtype=dtype)

    # Imported here so that config errors and --help work even while the IR is being changed.
    from .ir import build_decode_graph

    graph = build_decode_graph(model, deploy)
    if dump_ir:
        click.echo(graph.dump())
        return

    log(f"{config_path}: {model.name} ({model.model_type}, {model.num_hidden_layers} layers, hidden {model.hidden_size}) "
        f"on {deploy.gpu.name} ({deploy.gpu.arch}), batch {deploy.batch}, "
        f"max_context {deploy.max_context}, {deploy.dtype}")
    target = out_dir / model.name / f"{deploy.gpu.name}-bs{deploy.batch}"
    target.mkdir(parents=True, exist_ok=True)
    ir_path = write_atomic(target / "ir.json", json.dumps(graph.to_json(), indent=1) + "\n")
    log(f"wrote {ir_path}")

    codegen = _codegen()
    if codegen is None:
        log(f"{CODEGEN_MODULE} not available; stopping after the IR")
    else:
        codegen.emit(model, deploy, graph, target, log)

    context = getattr(graph, "context", None)
    at = f" at context {context}" if context is not None else ""
    log(f"done: {model.name} on {deploy.gpu.name} bs{deploy.batch}: "
        f"{graph.total_bytes() / 1e9:.3f} GB/step{at}, {graph.total_flops() / 1e9:.2f} GFLOP/step -> {target}")


if __name__ == "__main__":
    main()
