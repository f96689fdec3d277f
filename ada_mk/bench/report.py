"""What a decode step must read, and how a run is reported: its section of the tables file
(benchmarks/results/TABLES.md), JSON, plots.

No torch here: this module (and the byte accounting the tests check) works anywhere.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config.model import ModelConfig
from ..ir import DecodeAttention, Embedding, Linear, build_decode_graph

# Display order and names of the systems.
SYSTEMS = ("megakernel", "megakernel-fp8", "megakernel-int8", "megakernel-int4", "compile-flex", "compile-sdpa",
           "compile-int8", "compile-fp8", "compile-int4", "eager")
DEFAULT_SYSTEMS = ("megakernel", "compile-flex", "compile-sdpa", "eager")  # the quantized ones are opt-in
SYSTEM_NAMES = {
    "megakernel": "MegaKernel (ada_mk)",
    "megakernel-fp8": "MegaKernel (ada_mk), fp8 weights",
    "megakernel-int8": "MegaKernel (ada_mk), int8 weights",
    "megakernel-int4": "MegaKernel (ada_mk), int4 weights",
    "compile-flex": "torch.compile + flex_attention",
    "compile-sdpa": "torch.compile + SDPA",
    "compile-int8": "torch.compile + flex_attention, int8 weights",
    "compile-fp8": "torch.compile + flex_attention, fp8 weights",
    "compile-int4": "torch.compile + flex_attention, int4 weights (tinygemm)",
    "eager": "HF transformers eager (sdpa)",
}
REFERENCE_SYSTEM = "compile-flex"  # the strongest PyTorch decode: the baseline to beat
# The weights format each system reads (those not named read the model's bf16 weights).
SYSTEM_WEIGHTS = {"compile-int8": "int8", "compile-fp8": "fp8", "megakernel-int8": "int8", "megakernel-fp8": "fp8",
                  "megakernel-int4": "int4", "compile-int4": "int4"}
# The MegaKernel's systems: "megakernel" streams the format of --weights-format (else the config's),
# the others theirs (SYSTEM_WEIGHTS), each at the format's default scale group.
MEGAKERNEL_SYSTEMS = ("megakernel", "megakernel-fp8", "megakernel-int8", "megakernel-int4")
# torch.compile with weight-only linears: 8-bit (gpt-fast's int8 mode, fp8) and int4 (tinygemm, as
# gpt-fast's and torchao's int4 weight-only; CUDA)
QUANTIZED_BASELINES = ("compile-int8", "compile-fp8", "compile-int4")
WEIGHT_FORMATS = ("bf16", "int8", "fp8", "int4")
SCALE_BYTES = 4  # the 8-bit systems' scales: float32, one per output row
INT4_GROUP = 128  # step_bytes' int4: a 4-byte scale/offset pair per 128 input columns of a row


def system_weights(system: str) -> str:
    """The weights format `system` reads: "bf16", "int8", "fp8" or "int4"."""
    return SYSTEM_WEIGHTS.get(system, "bf16")


@dataclass(frozen=True)
class StepBytes:
    """Bytes one decode step of `batch` sequences must read at `context` cached positions."""

    weights: int  # every matrix once; the embedding only B rows unless tied (then the LM head reads it)
    kv: int  # K and V of `context` positions, every layer, every sequence
    total: int


def step_bytes(model: ModelConfig, batch: int, context: int, weights_format: str = "bf16",
               scale_bytes: int = SCALE_BYTES) -> StepBytes:
    """From the op-graph IR (ada_mk.ir): the weights each op reads plus the K/V that attention reads.

    bf16: tied embeddings are counted once, by the LM head (Graph.weight_bytes() adds the B
    looked-up rows on top of that). int8 / fp8 (weight-only, as the compile-int8 and compile-fp8
    baselines store them): every linear's matrix (layers and LM head) is 1 byte per weight plus
    `scale_bytes` per output row; int4 (as the compile-int4 baseline stores it): half a byte per
    weight plus a bf16 scale and zero per 128 input columns of a row, the LM head too (a MegaKernel
    row counts its plan's own bytes instead, plan_step_bytes: an int4 plan's head is int8); the embedding
    (B rows, read from its own bf16 copy even when tied), norms and biases stay bf16."""
    if weights_format not in WEIGHT_FORMATS:
        raise ValueError(f"step_bytes: weights format {weights_format!r}; expected one of {', '.join(WEIGHT_FORMATS)}")
    g = build_decode_graph(model, None, context=context, batch=batch, max_context=max(context, 1))
    eight_bit = weights_format != "bf16"

    def op_weight_bytes(op) -> int:
        if isinstance(op, Embedding) and model.tie_word_embeddings and not eight_bit:
            return 0
        if isinstance(op, Linear) and eight_bit:
            n, k = op.ins[1].shape
            int4 = weights_format == "int4"
            codes = n * k // 2 + 4 * n * -(-k // INT4_GROUP) if int4 else n * k + n * scale_bytes
            return codes + sum(t.nbytes for t in op.ins[2:])  # + the bf16 bias
        return sum(b for t, b in op.reads() if t.role == "weight")

    weights = sum(op_weight_bytes(op) for op in g.ops)
    kv = sum(b for op in g.ops if isinstance(op, DecodeAttention)
             for t, b in op.reads() if t.role == "kv_cache")
    return StepBytes(weights, kv, weights + kv)


def plan_step_bytes(plan: Any, context: int) -> StepBytes:
    """Bytes one decode step of the MegaKernel's `plan` (ada_mk.search.plan.Plan) reads at `context`:
    each linear stage's weights as the plan streams them (LinearTiling.rows_bytes over its tiles and
    K-splits: bf16 rows * k * 2; 8-bit packed chunks with their float32 scales and padded rows),
    the embedding's B rows (bf16; none where a bf16 LM head reads the tied matrix), the norms and
    biases (bf16), and the K/V that attention reads. With bf16 weights this is
    step_bytes(model, batch, context)."""
    from ..search.shapes import linear_shapes

    model, B = plan.model, plan.batch
    g = build_decode_graph(model, plan.deploy, context=context, batch=B, max_context=max(context, 1))
    tied_bf16 = model.tie_word_embeddings and plan.weights == "bf16"
    other = 0  # the embedding rows, norms and biases
    for op in g.ops:
        if isinstance(op, Embedding) and tied_bf16:
            continue
        if isinstance(op, Linear):
            other += sum(t.nbytes for t in op.ins[2:])  # the bf16 bias
            continue
        other += sum(b for t, b in op.reads() if t.role == "weight")
    linear = 0
    for kind in linear_shapes(model):
        t = plan.tilings[kind]
        stage = sum(t.rows_bytes(hi - lo) for lo, hi in map(t.row_range, range(t.tiles))) * t.ksplit
        linear += stage * (1 if kind == "lm_head" else model.num_hidden_layers)
    kv = sum(b for op in g.ops if isinstance(op, DecodeAttention)
             for t, b in op.reads() if t.role == "kv_cache")
    return StepBytes(linear + other, kv, linear + other + kv)


@dataclass
class Row:
    """One (config, batch, context, system) measurement; `ms` is None when it was not timed."""

    config: str
    batch: int
    context: int
    system: str
    ms: float | None = None  # median ms per decode step (one step = one token per sequence)
    ms_windows: list[float] = field(default_factory=list)
    bytes_per_step: int = 0
    weight_bytes: int = 0
    kv_bytes: int = 0
    read_gbs: float = 0.0  # the card's read bandwidth measured in the same run
    layers: int = 0  # decoder layers of the model
    check_rel_err: float | None = None
    cache_len: int | None = None  # KV cache positions allocated (SDPA and HF read all of them)
    compile_s: float | None = None
    weights: str = "bf16"  # the weights format the system reads (bytes_per_step counts that)
    note: str = ""
    error: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return None if not self.ms else self.batch * 1e3 / self.ms

    @property
    def gbs(self) -> float | None:
        return None if not self.ms else self.bytes_per_step / self.ms / 1e6

    @property
    def frac(self) -> float | None:
        return None if not self.ms or not self.read_gbs else self.gbs / self.read_gbs

    @property
    def floor_ms(self) -> float | None:
        return None if not self.read_gbs else self.bytes_per_step / self.read_gbs / 1e6

    @property
    def fixed_us_per_layer(self) -> float | None:
        """The fixed cost of a layer: (ms per step - bytes / read bandwidth) / layers, in us. The time a
        layer adds beyond streaming its bytes (its chain of dependency waits and staging)."""
        if not self.ms or not self.floor_ms or not self.layers:
            return None
        return (self.ms - self.floor_ms) * 1e3 / self.layers

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tokens_per_s=self.tokens_per_s, gbs=self.gbs, frac_read_bw=self.frac, floor_ms=self.floor_ms,
                 fixed_us_per_layer=self.fixed_us_per_layer)
        return d


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _sort_key(r: Row):
    order = SYSTEMS.index(r.system) if r.system in SYSTEMS else len(SYSTEMS)
    return (r.config, r.batch, r.context, order)


def markdown_table(rows: Iterable[Row]) -> str:
    """One line per system, grouped by (config, batch, context), each group closed by its floor."""
    rows = sorted(rows, key=_sort_key)
    ref = {(r.config, r.batch, r.context): r.ms for r in rows if r.system == REFERENCE_SYSTEM and r.ms}
    head = ("| config | batch | context | system | ms/step | tokens/s | GB/s | % of read bw "
            "| fixed us/layer | speedup vs compile-flex | GB/step | notes |")
    lines = [head, "|" + " --- |" * 12]
    for i, r in enumerate(rows):
        key = (r.config, r.batch, r.context)
        base = ref.get(key)
        speed = f"{base / r.ms:.2f}x" if base and r.ms else "-"
        notes = []
        if r.error:
            notes.append("NOT TIMED: " + r.error.replace("|", "/").replace("\n", " ")[:200])
        if r.check_rel_err is not None:
            notes.append(f"logits rel err {r.check_rel_err:.1e}")
        if r.cache_len:
            notes.append(f"cache {r.cache_len}")
        if r.compile_s:
            notes.append(f"compile {r.compile_s:.0f} s")
        if r.note:
            notes.append(r.note.replace("|", "/"))
        name = SYSTEM_NAMES.get(r.system, r.system)
        if r.system == "megakernel" and r.weights != "bf16":
            name += f", {r.weights} weights"
        lines.append(
            f"| {r.config} | {r.batch} | {r.context} | {name} | {_f(r.ms, '.3f')} "
            f"| {_f(r.tokens_per_s, ',.0f')} | {_f(r.gbs, ',.0f')} | {_f(r.frac and 100 * r.frac, '.1f')} "
            f"| {_f(r.fixed_us_per_layer, '.1f')} | {speed} "
            f"| {r.bytes_per_step / 1e9:.3f} | {'; '.join(notes)} |")
        last = i + 1 == len(rows) or (rows[i + 1].config, rows[i + 1].batch, rows[i + 1].context) != key
        if last:  # bytes over the measured read bandwidth, one line per bytes-per-step in the group
            for label, f in floors([x for x in rows if (x.config, x.batch, x.context) == key]):
                lines.append(f"| {f.config} | {f.batch} | {f.context} | {label} "
                             f"| {f.floor_ms:.3f} | {f.batch * 1e3 / f.floor_ms:,.0f} | {f.read_gbs:,.0f} | 100.0 "
                             f"| 0.0 | - | {f.bytes_per_step / 1e9:.3f} | |")
    return "\n".join(lines)


def floors(rows: Iterable[Row]) -> list[tuple[str, Row]]:
    """(label, a row) per distinct bytes per step among rows of one (config, batch, context): the
    bf16 floor is "floor: bytes / read bandwidth"; the 8-bit systems' floor names their formats."""
    groups: dict[int, list[Row]] = {}
    for r in rows:
        if r.floor_ms:
            groups.setdefault(r.bytes_per_step, []).append(r)
    out = []
    for nbytes, sel in sorted(groups.items(), key=lambda kv: -kv[0]):
        fmts = sorted({r.weights for r in sel}, key=lambda f: WEIGHT_FORMATS.index(f) if f in WEIGHT_FORMATS else 99)
        label = "floor: bytes / read bandwidth"
        if fmts != ["bf16"]:
            label = f"floor, {'/'.join(fmts)} weights: bytes / read bandwidth"
        out.append((label, sel[-1]))
    return out


def markdown_section(meta: dict[str, Any], rows: list[Row]) -> str:
    """One run's section of the tables file: when, where, which commit, the bandwidth, the table."""
    bw = meta.get("bandwidth", {})
    batches = sorted({r.batch for r in rows}) or [meta.get("batch", 1)]
    out = [
        f"## {meta['date']} · {meta['card']} · commit {meta['commit']}",
        "",
        f"- card: {meta['card']} ({meta.get('card_memory_gib', 0):.1f} GiB), torch {meta.get('torch', '?')}, "
        f"transformers {meta.get('transformers', '?')}, CUDA {meta.get('cuda', '?')}",
        f"- read bandwidth measured in this run: **{bw.get('read_gbs', 0):,.0f} GB/s** ({bw.get('read_method', '?')}); "
        f"copy {bw.get('copy_gbs', 0):,.0f} GB/s (read + write counted)",
        f"- megakernel plan: {meta.get('plan_note', '-')}",
        f"- batch {', '.join(map(str, batches))}; ms/step = median over {meta.get('windows', '?')} windows of "
        f"{meta.get('steps', '?')} chained decode steps, CUDA events, after warm-up; one step decodes one token "
        f"per sequence (batch B: B tokens per step). Context c: the cache holds about c tokens (timed steps "
        f"centred on c). Bytes per step: every weight matrix once (embedding: B rows unless tied) + the K/V "
        f"read at that context (ada_mk.ir); int8/fp8 systems: 1 byte per linear weight + a float32 scale per row, "
        f"int4 systems: half a byte + a 4-byte scale/offset pair per 128 columns (MegaKernel rows: what their plan "
        f"streams), "
        f"embedding rows and norms in bf16. Random {meta.get('dtype', 'bf16')} weights and inputs, fresh each run "
        f"(seed {meta.get('seed', '?')}).",
        *([f"- FAILED: {f}" for f in meta.get("failed", [])]),
        "",
        markdown_table(rows),
        "",
    ]
    return "\n".join(out) + "\n"


RESULTS_HEADER = ("# adamk-bench results\n\nDecode speed of the MegaKernel against PyTorch baselines, measured side "
                  "by side on one card per run. Appended by `adamk-bench` (see benchmarks/README.md), one section "
                  "per run; the JSON of each run is beside this file. What was tried and why: "
                  "benchmarks/RESULTS.md.\n\n")


def append_results(path: str | os.PathLike, section: str) -> None:
    """Append a section to the tables file at `path` (created with a header when missing)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    prefix = "" if p.exists() and p.stat().st_size else RESULTS_HEADER
    with open(p, "a", encoding="utf-8") as f:
        if prefix:
            f.write(prefix)
        elif not p.read_text(encoding="utf-8").endswith("\n\n"):
            f.write("\n")
        f.write(section)


def write_json(path: str | os.PathLike, meta: dict[str, Any], rows: list[Row]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": [r.to_json() for r in rows]}, indent=1, default=str))
    os.replace(tmp, p)


def plot(rows: list[Row], plot_dir: str | os.PathLike, card: str) -> list[Path]:
    """One PNG per (config, batch): ms/step against context, a line per system, and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(plot_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    card_tag = "".join(ch for ch in card.replace("NVIDIA", "").split("(")[0] if ch.isalnum()) or "gpu"
    for config, batch in sorted({(r.config, r.batch) for r in rows}):
        sel = [r for r in rows if r.config == config and r.batch == batch]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for system in SYSTEMS:
            pts = sorted((r.context, r.ms) for r in sel if r.system == system and r.ms)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=SYSTEM_NAMES[system])
        by_label: dict[str, set[tuple[int, float]]] = {}
        for c in sorted({r.context for r in sel}):
            for label, f in floors(r for r in sel if r.context == c):
                by_label.setdefault(label, set()).add((c, f.floor_ms))
        for j, (label, pts) in enumerate(by_label.items()):
            ax.plot(*zip(*sorted(pts)), linestyle="--" if j == 0 else ":", color="gray", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens in the KV cache)")
        ax.set_ylabel(f"ms per decode step (batch {batch})")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{config}, batch {batch}, {card}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = d / f"{config}_bs{batch}_{card_tag}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
