"""Where everything lives in device memory: the packed weights, scratch, counters and KV cache.

Every offset is fixed by the plan and compiled into the kernel as a constant. Layers are laid out
at a fixed stride so the kernel computes a layer's address as base + layer * stride.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .plan import LinearTiling, Plan

ALIGN_BYTES = 256


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Segment:
    """One region of a buffer: `name`, offset and size in elements of the buffer's unit,
    and for weights the HF tensors concatenated (along rows) into it, or, `interleaved`, taken a
    row of each in turn (gate 0, up 0, gate 1, up 1, ...).

    `tiling` = (rows, ksplit, kparts, chunk_cols): the [N, K] matrix is stored tiled (the
    batched multiply's weights on Hopper, LinearTiling.tiled), in the order its ring consumes
    it, so that each ring chunk is one contiguous bulk copy: for each task (tile of `rows` rows,
    K-split), its 16-row groups, each group's `kparts` column blocks, each block 16 rows x
    `chunk_cols` row-major, with the 64-byte halves of every 128-byte line swapped in odd rows
    where rows are whole lines (the multiply's bank swizzle, adamk/tasks.cuh tile_offset). Rows
    past N up to whole tiles are zero (`size` counts them). ada_mk.runtime.weights.tile_matrix
    makes this order.

    `linear`: the stage's LinearTiling where its weights are 8-bit (LinearTiling.quantized; then
    `tiling` is empty): the segment holds its chunks of codes and scales, `linear.tasks *
    linear.chunks * linear.chunk_bytes` bytes (`size` counts bf16 elements, half that;
    docs/quantized-weights.md, "The packed chunk"; ada_mk.runtime.weights_q8 packs them)."""

    name: str
    offset: int
    size: int
    shape: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    interleaved: bool = False
    tiling: tuple[int, ...] = ()
    linear: LinearTiling | None = None

    @property
    def weights(self) -> str:
        """The format the segment's matrix is stored in: bf16, fp8 or int8."""
        return self.linear.weights if self.linear is not None else "bf16"


@dataclass
class Region:
    """A buffer of `unit`-byte elements: global segments, then `layers` copies of a per-layer block."""

    unit: int
    globals_: dict[str, Segment] = field(default_factory=dict)
    per_layer: dict[str, Segment] = field(default_factory=dict)
    layer_base: int = 0
    layer_stride: int = 0
    layers: int = 0

    @property
    def total(self) -> int:
        return self.layer_base + self.layers * self.layer_stride

    @property
    def total_bytes(self) -> int:
        return self.total * self.unit


class _Builder:
    def __init__(self, unit: int):
        self.unit, self.cursor, self.segs = unit, 0, {}
        self.align = ALIGN_BYTES // unit

    def add(self, name: str, shape: tuple[int, ...], sources: tuple[str, ...] = (), interleaved: bool = False,
            tiling: tuple[int, ...] = (), linear: LinearTiling | None = None) -> None:
        size = 1
        for d in shape:
            size *= d
        if tiling:  # whole tiles of rows
            size = -(-shape[0] // tiling[0]) * tiling[0] * shape[1]
        if linear is not None:  # 8-bit chunks: codes and scales, counted in units
            if (linear.n, linear.k) != tuple(shape):
                raise ValueError(f"layout: {name} is {list(shape)}; its tiling is for [{linear.n}, {linear.k}]")
            size = linear.tasks * linear.chunks * linear.chunk_bytes // self.unit
        self.segs[name] = Segment(name, self.cursor, size, shape, sources, interleaved, tiling, linear)
        self.cursor = _align(self.cursor + size, self.align)


@dataclass
class Layout:
    weights: Region  # bf16 elements
    scratch: Region  # 4-byte elements (float partials, int argmax indices)
    counters: Region  # u32
    kv_elems_per_layer: int  # bf16 elements of K (and of V) per layer

    def to_json(self) -> dict:
        def seg(s: Segment) -> list:  # [offset, size, shape, sources, sources' rows interleaved, tiling(, 8-bit)]
            out = [s.offset, s.size, list(s.shape), list(s.sources), s.interleaved, list(s.tiling)]
            if s.linear is not None:
                out.append(quantized_json(s.linear))
            return out

        def region(r: Region) -> dict:
            return {
                "unit_bytes": r.unit,
                "globals": {k: seg(s) for k, s in r.globals_.items()},
                "per_layer": {k: seg(s) for k, s in r.per_layer.items()},
                "layer_base": r.layer_base,
                "layer_stride": r.layer_stride,
                "layers": r.layers,
                "total_bytes": r.total_bytes,
            }

        return {
            "weights": region(self.weights),
            "scratch": region(self.scratch),
            "counters": region(self.counters),
            "kv_elems_per_layer": self.kv_elems_per_layer,
        }


def quantized_json(t: LinearTiling) -> dict:
    """A quantized segment's chunking as the layout's JSON has it (the 7th entry of its segment): the
    LinearTiling's fields and the chunk geometry a reader of the packed buffer needs ("swizzled":
    whether a chunk's rows are bank-swizzled, docs/quantized-weights.md)."""
    return {"weights": t.weights, "group": t.group, "n": t.n, "k": t.k, "rows": t.rows, "ksplit": t.ksplit,
            "warps_per_row": t.warps_per_row, "batched": t.batched, "tiled": True, "kparts": t.kparts,
            "chunk_rows": t.chunk_rows, "chunk_cols": t.chunk_cols, "scales_per_row": t.scales_per_row,
            "chunk_bytes": t.chunk_bytes, "swizzled": t.batched and (
                t.chunk_cols % 128 == 0 if t.weights != "int4" else t.chunk_cols // 2 % 128 in (0, 64))}


def quantized_from_json(d: dict, where: str) -> LinearTiling:
    """quantized_json's inverse; ValueError (naming `where`) when its derived sizes disagree."""
    t = LinearTiling(int(d["n"]), int(d["k"]), int(d["rows"]), int(d["ksplit"]), int(d["warps_per_row"]),
                     bool(d["batched"]), True, str(d["weights"]), int(d["group"]))
    want = quantized_json(t)
    for key, v in d.items():
        if key in want and want[key] != v:
            raise ValueError(f"layout: {where} has {key} = {v!r}; its tiling gives {want[key]!r}")
    return t


def _region(unit: int, glob: _Builder, layer: _Builder, layers: int) -> Region:
    base = _align(glob.cursor, ALIGN_BYTES // unit)
    stride = _align(layer.cursor, ALIGN_BYTES // unit)
    return Region(unit, glob.segs, layer.segs, base, stride, layers)


def make_layout(plan: Plan) -> Layout:
    m, B = plan.model, plan.batch
    H, I, V, L = m.hidden_size, m.intermediate_size, m.vocab_size, m.num_hidden_layers
    nqkv = m.q_size + 2 * m.kv_size
    p = "model.layers.{i}."

    def tiling(kind: str) -> dict:
        """The stored form of a stage's matrix: bf16 tiled (Segment.tiling) or 8-bit chunks
        (Segment.linear; 8-bit weights are always tiled), or row-major bf16 ({})."""
        t = plan.tilings[kind]
        if t.quantized:
            return {"linear": t}
        return {"tiling": (t.rows, t.ksplit, t.kparts, t.chunk_cols)} if t.tiled else {}

    g = _Builder(2)
    g.add("embed", (V, H), ("model.embed_tokens.weight",))
    g.add("final_norm", (H,), ("model.norm.weight",))
    # A tied LM head shares the embedding's rows unless it is tiled or 8-bit (the embedding's rows
    # are read row by row, in bf16): then it gets its own tiled copy.
    tied = m.tie_word_embeddings and not tiling("lm_head")
    if not tied:
        src = "model.embed_tokens.weight" if m.tie_word_embeddings else "lm_head.weight"
        g.add("lm_head", (V, H), (src,), **tiling("lm_head"))
    w = _Builder(2)
    w.add("input_norm", (H,), (p + "input_layernorm.weight",))
    w.add("wqkv", (nqkv, H), tuple(p + f"self_attn.{x}_proj.weight" for x in "qkv"), **tiling("qkv"))
    if m.attention_bias:
        w.add("bqkv", (nqkv,), tuple(p + f"self_attn.{x}_proj.bias" for x in "qkv"))
    if m.qk_norm:  # q's head RMSNorm weight, then k's; the kernel norms the heads where it has them
        w.add("qk_norm", (2 * m.head_dim,), (p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"))
    w.add("wo", (H, m.q_size), (p + "self_attn.o_proj.weight",), **tiling("o"))
    w.add("post_norm", (H,), (p + "post_attention_layernorm.weight",))
    # gate and up rows interleaved: a gate/up task holds both halves of its columns and stores
    # SiLU(gate) * up itself (adamk/linear.cuh), so the down projection stages a plain copy.
    w.add("wgate_up", (2 * I, H), (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), interleaved=True,
          **tiling("gate_up"))
    w.add("wdown", (H, I), (p + "mlp.down_proj.weight",), **tiling("down"))
    weights = _region(2, g, w, L)
    if tied:
        weights.globals_["lm_head"] = weights.globals_["embed"]

    t = plan.tilings
    lm_tiles = t["lm_head"].tiles
    g = _Builder(4)
    g.add("logits", (B, V))
    g.add("arg_val", (B, lm_tiles))
    g.add("arg_idx", (B, lm_tiles))
    s = _Builder(4)
    # q/k/v partial sums, each with the step's epoch in the same 8-byte word: the attention tasks
    # poll the values themselves (adamk/attention.cuh, qkv_values), no counter in between.
    s.add("qkv_part", (t["qkv"].ksplit, B, nqkv, 2))
    # Flash-decoding's split partials; as 8-byte words {value, step} where the combiner polls them
    # (Plan.attn_polled).
    words = (2,) if plan.attn_polled else ()
    s.add("attn_o", (B, m.num_attention_heads, plan.attn_splits, m.head_dim) + words)
    s.add("attn_ml", (B, m.num_attention_heads, plan.attn_splits, 2) + words)
    s.add("attn_out", (B, m.q_size // 2))  # the combined attention output, bf16 pairs
    if t["gate_up"].ksplit > 1:  # float partials, rows interleaved as the weights
        s.add("gate_up_part", (t["gate_up"].ksplit, B, 2 * I))
    else:  # SiLU(gate) * up, the down projection's input
        s.add("mlp_act", (B, I // 2))  # bf16 pairs
    for stage in ("o", "down"):  # the residual stream after attention and after the MLP
        if t[stage].ksplit > 1:
            s.add(f"{stage}_part", (t[stage].ksplit, B, H))
        s.add(f"{stage}_stream", (B, H // 2))  # bf16 pairs
        s.add(f"{stage}_sumsq", (t[stage].tiles, B))  # per tile, for the consumers' RMSNorm
    scratch = _region(4, g, s, L)

    g = _Builder(4)
    g.add("lm_head", (lm_tiles,))
    c = _Builder(4)
    c.add("attn", (B * m.num_key_value_heads,))
    if not plan.attn_polled:
        c.add("attn_arrive", (B * m.num_key_value_heads,))  # splits finished, to elect the combiner
    c.add("o", (t["o"].tiles,))
    c.add("gate_up", (t["gate_up"].tiles,))
    c.add("down", (t["down"].tiles,))
    for stage in ("o", "down"):
        if t[stage].ksplit > 1:  # splits finished, to elect the one that sums them
            c.add(f"{stage}_arrive", (t[stage].tiles,))
    counters = _region(4, g, c, L)

    kv = B * m.num_key_value_heads * plan.deploy.max_context * m.head_dim
    return Layout(weights, scratch, counters, kv)
