"""Pack a checkpoint's weights into one kernel's device layout, as a raw file of bf16 bytes that
`adamk_create()` takes as it is (see examples/c/); what `adamk-pack` does.

The layout comes from the kernel itself (its adamk_plan_json(), or its plan.json:
`weights_layout_from_json`) or from a plan made here (`ada_mk.search.layout.make_layout`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..search.layout import Region, Segment, quantized_from_json

class _WeightsLayout:
    """Just enough of a Layout for pack_weights: the weights region."""

    def __init__(self, weights: Region) -> None:
        self.weights = weights


def weights_layout_from_json(doc: Mapping[str, Any]) -> _WeightsLayout:
    """The weights region of a plan.json / adamk_plan_json() document ({"plan", "layout"})."""
    r = doc["layout"]["weights"]

    def segs(d: Mapping[str, Any]) -> dict[str, Segment]:
        # v[4], the interleave flag, and v[5], the tiling, are absent from layouts written before they
        # existed; v[6], an 8-bit segment's chunking, is present only on 8-bit segments
        return {k: Segment(k, int(v[0]), int(v[1]), tuple(v[2]), tuple(v[3]), len(v) > 4 and bool(v[4]),
                           tuple(int(x) for x in v[5]) if len(v) > 5 else (),
                           quantized_from_json(v[6], f"weights segment {k!r}") if len(v) > 6 else None)
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
