"""Pack a checkpoint's weights into one kernel's device layout, as a raw file of bf16 bytes that
`adamk_create()` takes as it is (see examples/c/).

    python -m ada_mk.checkpoints.pack --weights SmolLM2.gguf -o weights.bin                 # plan made here
    python -m ada_mk.checkpoints.pack --weights ckpt/ --library libadamk_....so -o weights.bin
    python -m ada_mk.checkpoints.pack --weights ckpt/ --plan out/.../plan.json -o weights.bin

The layout comes from the kernel itself (--library: its adamk_plan_json(); --plan: a plan.json),
or from the plan ada_mk makes for --config/--gpu/--batch/--max-context (the same one adamk-gen and
adamk-run make). Errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..search.layout import Region, Segment

PROG = "python -m ada_mk.checkpoints.pack"


class _WeightsLayout:
    """Just enough of a Layout for pack_weights: the weights region."""

    def __init__(self, weights: Region) -> None:
        self.weights = weights


def weights_layout_from_json(doc: Mapping[str, Any]) -> _WeightsLayout:
    """The weights region of a plan.json / adamk_plan_json() document ({"plan", "layout"})."""
    r = doc["layout"]["weights"]

    def segs(d: Mapping[str, Any]) -> dict[str, Segment]:
        # v[4], the interleave flag, and v[5], the tiling, are absent from layouts written before they existed
        return {k: Segment(k, int(v[0]), int(v[1]), tuple(v[2]), tuple(v[3]), len(v) > 4 and bool(v[4]),
                           tuple(int(x) for x in v[5]) if len(v) > 5 else ())
                for k, v in d.items()}

    region = Region(int(r["unit_bytes"]), segs(r["globals"]), segs(r["per_layer"]), int(r["layer_base"]),
                    int(r["layer_stride"]), int(r["layers"]))
    if region.total_bytes != int(r["total_bytes"]):
        raise ValueError(f"layout: weights total_bytes {r['total_bytes']} disagrees with its segments "
                         f"({region.total_bytes})")
    return _WeightsLayout(region)


def pack_checkpoint(weights: Mapping[str, Any], layout: Any, out: Path) -> int:
    """Write the packed buffer to `out` (atomically); returns its size in bytes."""
    from ..runtime.weights import pack_weights

    packed = np.ascontiguousarray(pack_weights(layout, weights), dtype="<u2")
    tmp = out.with_name(out.name + ".tmp")
    packed.tofile(tmp)
    tmp.replace(out)
    return packed.nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="GGUF file or HF folder (config.json + *.safetensors)")
    ap.add_argument("--config", help="model config (YAML or HF config.json); default: the checkpoint's own")
    ap.add_argument("-o", "--out", required=True, help="output file of raw bf16 bytes")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--library", help="a generated lib<kernel>.so: pack for its layout")
    src.add_argument("--plan", help="a generated plan.json: pack for its layout")
    ap.add_argument("--gpu", help="without --library/--plan: the GPU to plan for (default H100)")
    ap.add_argument("--batch", type=int, help="without --library/--plan: the batch (default 1)")
    ap.add_argument("--max-context", type=int, help="without --library/--plan: the KV cache length")
    a = ap.parse_args(argv)

    from ..config import ConfigError
    from .errors import CheckpointError

    try:
        model = None
        if a.config:
            from ..config import load_config

            model, _ = load_config(a.config)
        from .load import load_checkpoint

        ck = load_checkpoint(a.weights, model)
        if a.library:
            from ..runtime.capi import SharedLibrary

            doc = SharedLibrary(a.library).plan_json()
            layout: Any = weights_layout_from_json(doc)
            what = Path(a.library).name
        elif a.plan:
            doc = json.loads(Path(a.plan).read_text())
            layout = weights_layout_from_json(doc)
            what = a.plan
        else:
            from ..run_cli import deploy_for
            from ..search.layout import make_layout
            from ..search.planner import make_plan

            plan = make_plan(ck.model, deploy_for(ck.model, a.gpu, a.batch, a.max_context))
            layout, what = make_layout(plan), plan.kernel_name
        if a.library or a.plan:
            pm = doc["plan"].get("model", {})
            for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
                if key in pm and pm[key] != getattr(ck.model, key):
                    raise CheckpointError(f"{what}: the kernel's model has {key} = {pm[key]}; the checkpoint "
                                          f"{getattr(ck.model, key)}")
        n = pack_checkpoint(ck.weights, layout, Path(a.out))
    except (CheckpointError, ConfigError, ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {a.out}: {n} bytes for {what}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
