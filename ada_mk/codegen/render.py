"""Render a plan into CUDA source: the kernel `.cu`, its schedule table, the C-ABI host code and
header. Pure text; nothing here compiles."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from .. import __version__
from ..ir.rope import rope_inv_freq
from ..runtime.weights_check import weight_segments
from ..search.layout import Layout, make_layout
from ..search.plan import KIND_IDS, Plan, Run

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TILING_CLASSES = {"qkv": "Qkv", "o": "O", "gate_up": "GateUp", "down": "Down", "lm_head": "LmHead"}


@dataclass(frozen=True)
class Source:
    """The generated files of one kernel, by file name; `name` is their stem, stable per (model,
    GPU, batch) (Plan.file_stem). The kernel's symbol, Plan.kernel_name, carries the plan hash."""

    name: str
    files: dict[str, str]


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )


def _cfloat(x: float) -> str:
    """A float literal that round-trips float32 exactly."""
    return f"{float(np.float32(x)):.9e}f"


FORMAT_ENUM = {"bf16": "adamk::BF16", "fp8": "adamk::FP8", "int8": "adamk::INT8", "int4": "adamk::INT4"}


def _tiling_params(t) -> list[str]:
    """Tiling<...>'s arguments: the shape, then only as many of the defaulted ones (chunk shape,
    tiled, format, group) as differ from their defaults."""
    params = [t.n, t.k, t.rows, t.ksplit, t.warps_per_row, t.chunk_rows, t.chunk_cols,
              "true" if t.tiled else "false", FORMAT_ENUM[t.weights], t.group]
    defaults = [None] * 5 + [8 // t.warps_per_row, t.kc, "false", "adamk::BF16", 0]
    while len(params) > 5 and params[-1] == defaults[len(params) - 1]:
        params.pop()
    return [str(p) for p in params]


def _tiling_rows(plan: Plan) -> list[dict]:
    rows = []
    for kind, t in plan.tilings.items():
        scale = "a scale and offset" if t.weights == "int4" else "a scale"
        weights = "bf16" if not t.quantized else f"{t.weights}, {scale} per " + (
            f"{t.group} columns" if t.group else "row")
        comment = (f"{t.tiles} tiles x {t.ksplit} K-split = {t.tasks} tasks of {t.task_bytes // 1024} KB, "
                   f"{t.chunks} chunk(s) of {t.chunk_bytes // 1024} KB; {weights}")
        rows.append(dict(cls=TILING_CLASSES[kind], params=", ".join(_tiling_params(t)), comment=comment))
    return rows


def _regions(layout: Layout) -> list[dict]:
    def fields(region, names: dict[str, str]) -> list[tuple[str, int]]:
        out = []
        for src, dst in names.items():
            if src in region.globals_:
                out.append((dst, region.globals_[src].offset))
        out += [("LAYER_BASE", region.layer_base), ("LAYER_STRIDE", region.layer_stride),
                ("TOTAL", region.total)]
        for src, seg in region.per_layer.items():
            out.append((src.upper(), seg.offset))
        return out

    w, s, k = layout.weights, layout.scratch, layout.counters
    return [
        dict(cls="Weights", comment=f"Packed weights, bf16 elements ({w.total_bytes / 1e9:.3f} GB); per layer at LAYER_BASE + layer * LAYER_STRIDE.",
             fields=fields(w, {"embed": "EMBED", "final_norm": "FINAL_NORM", "lm_head": "LM_HEAD"})
             + ([("BQKV", 0)] if "bqkv" not in w.per_layer else [])),
        dict(cls="Scratch", comment=f"Scratch, 4-byte elements ({s.total_bytes / 1e6:.2f} MB): K-split partials, attention partials, logits.",
             fields=fields(s, {"logits": "LOGITS", "arg_val": "ARG_VAL", "arg_idx": "ARG_IDX"})),
        dict(cls="Counters", comment="Dependency counters (u32), one per producer tile; attention: one per (sequence, K/V head).",
             fields=fields(k, {"lm_head": "LM_HEAD"})),
        dict(cls="KvCache", comment="KV cache, bf16 elements: K and V each [layer][sequence][K/V head][position][head_dim].",
             fields=[("LAYER", layout.kv_elems_per_layer), ("TOTAL", layout.kv_elems_per_layer * k.layers)]),
    ]


KIND_NAMES = {kind: kind.upper() for kind in KIND_IDS}  # adamk::Kind's enumerators
SCHEDULE_LINE = 120  # characters before a layer's runs continue on the next line


def _run_call(run: Run) -> str:
    """One run as the .cu's `run(...)` helper reads it; stride and count only where not 1."""
    args = [KIND_NAMES[run.kind], str(run.layer), str(run.start)]
    if run.count > 1:
        args += [str(run.stride), str(run.count)]
    return f"run({', '.join(args)})"


def _phase(run: Run) -> str:
    """The comment heading a line of runs: the layer, or the LM head."""
    return "LM head" if run.kind in ("lm_head", "argmax") else f"layer {run.layer}"


def schedule_table(plan: Plan) -> tuple[str, list[int]]:
    """Every SM's runs as the .cu's kRuns[] initialisers, an SM's runs of one layer on a line
    headed by that layer, and where each SM's runs begin in kRuns[]."""
    width = len(f"layer {plan.model.num_hidden_layers - 1}")
    lines = [f"// {plan.file_stem}.schedule.inc: the task list of every SM in plan {plan.plan_hash}, included",
             "// by kRuns[] of the .cu. run(kind, layer, first[, stride, count]): the tasks first, first + stride,",
             "// ... (count of them) of that stage, in order; a task's index within its stage is",
             "// tile * ksplit + split for a linear stage, (sequence * K/V heads + head) * splits + split for",
             "// attention. A line holds one SM's consecutive runs of one layer."]
    starts, n = [], 0
    for sm, runs in enumerate(plan.schedule):
        starts.append(n)
        n += len(runs)
        lines.append(f"\n// SM {sm}: {sum(r.count for r in runs)} tasks in {len(runs)} runs")
        for phase, group in itertools.groupby(runs, key=_phase):
            head = f"/* {phase:<{width}} */ "
            line = head
            for r in group:
                call = _run_call(r) + ","
                if line != head and len(line) + 1 + len(call) > SCHEDULE_LINE:
                    lines.append(line)
                    line = " " * len(head)
                line += ("" if line.endswith(" ") else " ") + call
            lines.append(line)
    starts.append(n)
    return "\n".join(lines) + "\n", starts


def weights_line(plan: Plan) -> str:
    """The format the kernel's linear weights stream in, for its header comment."""
    if plan.weights == "bf16":
        return "bf16"
    per = f"{plan.weights_group} columns" if plan.weights_group else "row"
    if plan.weights == "int4":
        return (f"int4 codes with a bf16 scale and offset per {per}, decoded in registers "
                "(docs/quantized-weights.md); the embedding stays bf16")
    return (f"{plan.weights} codes with a float32 scale per {per}, decoded in registers "
            "(docs/quantized-weights.md); the embedding stays bf16")


def render(plan: Plan) -> Source:
    name, stem = plan.kernel_name, plan.file_stem
    layout = make_layout(plan)
    inv_freq = rope_inv_freq(plan.model)
    table, starts = schedule_table(plan)
    env = _env()
    kernel = env.get_template("megakernel.cu.j2").render(
        name=name, stem=stem, plan=plan, m=plan.model, gpu=plan.deploy.gpu, deploy=plan.deploy, version=__version__,
        inv_freq=[_cfloat(x) for x in inv_freq], eps=_cfloat(plan.model.rms_norm_eps),
        attn_scale=_cfloat(1.0 / math.sqrt(plan.model.head_dim)),
        tilings=_tiling_rows(plan), smem=list(plan.smem_layout().items()), regions=_regions(layout),
        sm_runs=starts, max_tasks=max(sum(r.count for r in runs) for runs in plan.schedule),
        weights=weights_line(plan),
    )
    files = {f"{stem}.cu": kernel, f"{stem}.schedule.inc": table}
    files.update(render_host_api(plan, layout, env))
    return Source(stem, files)


# ---- the C ABI: lib<name>.so's host code and its header ------------------------------------
JSON_PIECE_LIMIT = 16000  # characters of one C string literal piece, escapes included


def _c_escape(ch: str) -> str:
    """One character of ASCII text inside a C string literal."""
    if ch in '\\"':
        return "\\" + ch
    if ch == "?":
        return "\\?"  # no trigraphs
    if " " <= ch <= "~":
        return ch
    return f"\\{ord(ch):03o}"  # three octal digits: never runs into the next character


def c_string_pieces(text: str, limit: int = JSON_PIECE_LIMIT) -> list[str]:
    """`text` (ASCII) as the bodies of C string literals of fewer than `limit` characters each,
    never splitting an escape."""
    pieces, cur, n = [], [], 0
    for ch in text:
        e = _c_escape(ch)
        if n + len(e) >= limit:
            pieces.append("".join(cur))
            cur, n = [], 0
        cur.append(e)
        n += len(e)
    if cur or not pieces:
        pieces.append("".join(cur))
    return pieces


def plan_json(plan: Plan, layout: Layout) -> str:
    """What adamk_plan_json() returns: {"plan": plan.to_json(), "layout": layout.to_json()}."""
    return json.dumps({"plan": plan.to_json(), "layout": layout.to_json()}, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def render_host_api(plan: Plan, layout: Layout, env: jinja2.Environment | None = None) -> dict[str, str]:
    """`<stem>_host.cu` (the C ABI, compiled into lib<stem>.so) and `<stem>.h` (its header)."""
    env = env or _env()
    name, stem = plan.kernel_name, plan.file_stem
    text = plan_json(plan, layout)
    common = dict(name=name, stem=stem, plan=plan, m=plan.model, gpu=plan.deploy.gpu, deploy=plan.deploy,
                  version=__version__, weights_bytes=layout.weights.total_bytes)
    host = env.get_template("host_api.cu.j2").render(
        **common, json_pieces=c_string_pieces(text), json_chars=len(text), json_piece_limit=JSON_PIECE_LIMIT,
        segments=weight_segments(layout), layer_stride_bytes=layout.weights.layer_stride * layout.weights.unit)
    header = env.get_template("adamk_api.h.j2").render(**common)
    return {f"{stem}_host.cu": host, f"{stem}.h": header}
