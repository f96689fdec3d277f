"""`adamk-pack`: pack a checkpoint's weights into one kernel's device layout, as the raw file
that `adamk_create()` takes (see examples/c/; the logic is ada_mk.checkpoints.pack): bf16 bytes,
and for a plan with 8-bit stages their quantized chunks, so later loads skip the quantization.

    adamk-pack --weights SmolLM2.gguf -o weights.bin                          # plan made here
    adamk-pack --weights ckpt/ --library out/.../libadamk_....so -o weights.bin
    adamk-pack --weights ckpt/ --plan out/.../plan.json -o weights.bin
    adamk-pack --weights ckpt/ --weights-format fp8 -o weights.bin          # an 8-bit plan made here
"""
from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import click

from ..config.deploy import WEIGHT_FORMATS
from .common import command, fail_as, say

PROG = "adamk-pack"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


@command(PROG)
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path),
              help="A GGUF file, or an HF folder (config.json + *.safetensors).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Model config (configs/*.yaml or an HF config.json); default: the checkpoint's own.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Output file of the raw packed weights (bf16 bytes, 8-bit stages as their chunks).")
@click.option("--library", type=click.Path(path_type=Path), default=None,
              help="A generated lib<kernel>.so: pack for the layout it was built with.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), default=None,
              help="A generated plan.json: pack for its layout.")
@click.option("--gpu", default=None, help="Without --library/--plan: the GPU to plan for. [default: this machine's, else H100]")
@click.option("--batch", type=int, default=None, help="Without --library/--plan: the batch. [default: 1]")
@click.option("--max-context", type=int, default=None,
              help="Without --library/--plan: the KV cache length. [default: min(4096, max_position_embeddings)]")
@click.option("--weights-format", type=click.Choice(list(WEIGHT_FORMATS)), default=None,
              help="Without --library/--plan: the format the plan streams its linear weights in (deploy.weights); "
                   "with them, a check of the kernel's. [default: bf16]")
@click.option("--weights-group", type=int, default=None,
              help="Without --library/--plan: input columns per scale of quantized weights, 0 for one per row "
                   "(deploy.weights_group). [default: the format's]")
def main(weights_path: Path, config_path: Path | None, out_path: Path, library: Path | None,
         plan_path: Path | None, gpu: str | None, batch: int | None, max_context: int | None,
         weights_format: str | None, weights_group: int | None) -> None:
    """Pack the weights of a checkpoint for one kernel, as the raw bf16 file adamk_create() takes:
    for the kernel's own layout (--library or --plan), or for the plan adamk-gen makes for
    --gpu/--batch/--max-context.

    \b
    Examples:
      adamk-pack --weights SmolLM2.gguf --library out/smollm2/H100-bs1/libadamk_....so -o weights.bin
      adamk-pack --weights ckpt/ --plan out/llama3.2-1b/H100-bs1/plan.json -o weights.bin
    """
    from ..checkpoints.errors import CheckpointError
    from ..config import ConfigError

    if library is not None and plan_path is not None:
        fail("--library and --plan are alternatives: give one")
    try:
        n, what = _pack(weights_path, config_path, out_path, library, plan_path, gpu, batch, max_context,
                        weights_format, weights_group)
    except (CheckpointError, ConfigError, ValueError, KeyError, OSError) as e:
        fail(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
    log(f"wrote {out_path}: {n} bytes for {what}")


def _layout_format(layout: Any) -> str:
    """The format a layout's linear stages stream in ("bf16" when none is quantized; "int4" where the
    layers' stages are int4, whose plan streams its LM head in int8)."""
    w = layout.weights
    fmts = {s.weights for s in (*w.globals_.values(), *w.per_layer.values()) if s.linear is not None}
    if "int4" in fmts:
        return "int4"
    return fmts.pop() if len(fmts) == 1 else ("bf16" if not fmts else "/".join(sorted(fmts)))


def _deploy(model: Any, gpu: str | None, batch: int | None, max_context: int | None, fmt: str | None,
            group: int | None) -> Any:
    """The deployment for a plan made here, --weights-format/--weights-group passed through to
    deploy_for where it takes them (it checks them; ConfigError naming the flag)."""
    import inspect

    from ..config import ConfigError, deploy_for

    if "weights" in inspect.signature(deploy_for).parameters:
        return deploy_for(model, gpu, batch, max_context, weights=fmt, weights_group=group)
    if fmt not in (None, "bf16") or group:
        raise ConfigError("this ada-mk's planner makes bf16 plans only; pack for an 8-bit kernel with --plan or "
                          "--library", field="--weights-format", value=fmt)
    return deploy_for(model, gpu, batch, max_context)


def _pack(weights_path: Path, config_path: Path | None, out_path: Path, library: Path | None,
          plan_path: Path | None, gpu: str | None, batch: int | None, max_context: int | None,
          weights_format: str | None = None, weights_group: int | None = None) -> tuple[int, str]:
    from ..checkpoints.errors import CheckpointError
    from ..checkpoints.load import load_checkpoint
    from ..checkpoints.pack import pack_checkpoint, weights_layout_from_json
    from ..config import ConfigError, load_config

    model = load_config(config_path)[0] if config_path is not None else None
    ck = load_checkpoint(weights_path, model)
    layout: Any
    if library is not None or plan_path is not None:
        if library is not None:
            from ..runtime.capi import SharedLibrary

            doc, what = SharedLibrary(library).plan_json(), library.name
        else:
            doc, what = json.loads(plan_path.read_text()), str(plan_path)
        layout = weights_layout_from_json(doc)
        pm = doc["plan"].get("model", {})
        for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
            if key in pm and pm[key] != getattr(ck.model, key):
                raise CheckpointError(f"{what}: the kernel's model has {key} = {pm[key]}; the checkpoint "
                                      f"{getattr(ck.model, key)}")
        if weights_format is not None and weights_format != _layout_format(layout):
            raise ConfigError(f"{what} streams {_layout_format(layout)} weights", field="--weights-format",
                              value=weights_format)
    else:
        from ..search.layout import make_layout
        from ..search.planner import make_plan

        plan = make_plan(ck.model, _deploy(ck.model, gpu, batch, max_context, weights_format, weights_group))
        layout, what = make_layout(plan), plan.kernel_name
    return pack_checkpoint(ck.weights, layout, out_path, ck.quantized, ck.int4), what


if __name__ == "__main__":
    sys.exit(main())
