"""`adamk-gen`: generate the decode MegaKernel for one (model, GPU, batch).

    adamk-gen --config configs/llama3-8b.yaml --gpu L20 --batch 4

Flow: read the configuration -> build the IR of one decode step -> write
`<out>/<model>/<gpu>-bs<batch>/ir.json` -> hand over to the code generator
(`ada_mk.codegen.pipeline.emit`: plan.json, the kernel sources, then nvcc unless --no-build).

Errors in the user's input (bad config or flags, a plan that does not fit the GPU, nvcc missing
or failing) are one line on stderr, `adamk-gen: error: ...`, with exit status 2 (the status click
uses for usage errors); a traceback means a bug in the generator.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from functools import partial
from typing import Any, Callable

import click

from ..config import DTYPES, MAX_BATCH, ConfigError, DeployConfig, load_config, weights_suffix
from ..config.gpus import known_gpus_text
from ..fsutil import write_atomic
from .common import check_arch, command, fail_as, say, weights_options

PROG = "adamk-gen"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


def _codegen_errors() -> tuple[type[BaseException], ...]:
    """The code generator's one-line user errors (imported only when an exception propagates, so
    that --help and config errors need no code generator)."""
    from ..codegen.pipeline import EmitError
    from ..search.profile import ProfileError

    return EmitError, ProfileError


@command(PROG)
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
@weights_options()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="Output root; files go to OUT/<model>/<gpu>-bs<batch>/ "
                                      "(8-bit weights: <gpu>-bs<batch>-<format>/).")
@click.option("--dump-ir", is_flag=True,
              help="Print the decode-step IR to stdout and exit without writing anything.")
@click.option("--no-build", is_flag=True,
              help="Write the plan and the kernel sources only; do not run nvcc.")
@click.option("--arch", "archs", multiple=True, metavar="SM", callback=check_arch,
              help="Also compile for this architecture (repeatable: --arch sm_89 --arch sm_90a): "
                   "sm_80, sm_89, sm_90a, or sm_90 (no Hopper-only instructions). "
                   "The target GPU's own architecture is always included.")
@click.option("--explain", is_flag=True,
              help="Print what the plan decided (tiling, K-split, shared memory, predicted time) "
                   "to stdout, and write explain.txt, trace.json and gantt.png beside the kernel.")
@click.option("--profile", "profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="PATH", help="With --explain: a profile.npz of this kernel from an instrumented build "
                                   "(benchmarks/profile_step.py); shows measured task times beside the predicted.")
def main(config_path: Path, gpu: str | None, batch: int | None, max_context: int | None,
         dtype: str | None, weights: str | None, weights_group: int | None, out_dir: Path, dump_ir: bool, no_build: bool, archs: tuple[str, ...],
         explain: bool, profile: Path | None) -> None:
    """Generate one CUDA MegaKernel that decodes the model of --config on --gpu at --batch.

    Writes ir.json, plan.json and the kernel sources (<stem>.cu, <stem>.schedule.inc,
    <stem>_host.cu, <stem>.h, where <stem> is adamk_<model>_<gpu>_bs<batch>, plus _fp8 or
    _int8 with 8-bit weights) to OUT/<model>/<gpu>-bs<batch>/, then compiles them with nvcc into <stem>.fatbin (for
    cuda-python) and lib<stem>.so (C ABI) there.

    \b
    Examples:
      adamk-gen --config configs/llama3-8b.yaml                    # H100, batch 1
      adamk-gen --config configs/llama3.2-1b.yaml --gpu L20 --batch 4 --explain
      adamk-gen --config path/to/config.json --gpu H100 --no-build # sources only, no nvcc
      adamk-gen --config configs/llama3-8b.yaml --weights-format fp8 --weights-group 128
    """
    if no_build and archs:
        fail("--arch needs a build: drop --no-build")
    if profile is not None and not explain:
        fail("--profile needs --explain")
    try:
        generate(config_path, gpu, batch, max_context, dtype, out_dir, dump_ir=dump_ir,
                 build=not no_build, archs=archs, explain=explain, profile=profile,
                 weights=weights, weights_group=weights_group)
    except ConfigError as e:
        fail(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}cannot write output: {e.strerror or e}")
    except _codegen_errors() as e:
        fail(str(e))


def generate(config_path: Path, gpu: str | None, batch: int | None, max_context: int | None,
             dtype: str | None, out_dir: Path, *, dump_ir: bool = False, build: bool = True,
             archs: tuple[str, ...] = (), explain: bool = False,
             profile: Path | None = None, log: Callable[[str], None] = log, weights: str | None = None,
             weights_group: int | None = None) -> Path | None:
    """What `adamk-gen` does; returns the output directory (None for dump_ir). Also used by
    `python -m ada_mk.codegen.regen`, so the checked-in kernels are exactly the CLI's output.
    `weights` / `weights_group`: --weights-format / --weights-group (None: the config's)."""
    model, deploy = load_config(config_path, gpu=gpu, batch=batch, max_context=max_context, dtype=dtype,
                                weights=weights, weights_group=weights_group)

    # Imported here so that config errors and --help work even while the IR is being changed.
    from ..ir import build_decode_graph

    graph = build_decode_graph(model, deploy)
    if dump_ir:
        click.echo(graph.dump())
        return None

    log(f"{config_path}: {model.name} ({model.model_type}, {model.num_hidden_layers} layers, hidden {model.hidden_size}) "
        f"on {deploy.gpu.name} ({deploy.gpu.arch}), batch {deploy.batch}, "
        f"max_context {deploy.max_context}, {deploy.dtype}{weights_text(deploy)}")
    from ..codegen.pipeline import emit, plan_for

    plan = plan_for(model, deploy)  # a plan that does not fit the card fails before anything is written
    target = out_dir / model.name / output_dir_name(deploy)
    target.mkdir(parents=True, exist_ok=True)
    ir_path = write_atomic(target / "ir.json", json.dumps(graph.to_json(), indent=1) + "\n")
    log(f"wrote {ir_path}")

    options: dict[str, Any] = {"plan": plan}  # and what differs from emit's defaults
    if not build:
        options["build_kernel"] = False
    if archs:
        options["archs"] = tuple(archs)
    if explain:
        options["explain"] = lambda text: click.echo(text, nl=not text.endswith("\n"))
        if profile is not None:
            options["profile"] = profile
    emit(model, deploy, graph, target, log, **options)

    context = getattr(graph, "context", None)
    at = f" at context {context}" if context is not None else ""
    log(f"done: {model.name} on {deploy.gpu.name} bs{deploy.batch}{weights_text(deploy)}: "
        f"{graph.total_bytes() / 1e9:.3f} GB/step{at}, {graph.total_flops() / 1e9:.2f} GFLOP/step -> {target}")
    return target


def output_dir_name(deploy: DeployConfig) -> str:
    """The kernel's folder under OUT/<model>/: <gpu>-bs<batch>, plus -<format> for 8-bit weights
    (-fp8, -int8g128: weights_suffix)."""
    return f"{deploy.gpu.name}-bs{deploy.batch}" + weights_suffix(deploy.weights, deploy.weights_group).replace("_", "-")


def weights_text(deploy: DeployConfig) -> str:
    """', <format> weights[ group N]' for 8-bit weights, else ''."""
    if deploy.weights == "bf16":
        return ""
    group = f" group {deploy.weights_group}" if deploy.weights_group else " per-row scales"
    return f", {deploy.weights} weights{group}"


if __name__ == "__main__":
    sys.exit(main())
