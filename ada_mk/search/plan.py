"""The plan: every decision the generated kernel needs, made before it is generated.

A plan fixes, for one (model, GPU, batch):
  * the tiling of each fused linear stage (rows per task, K-split, warps per row),
  * the number of sequence splits of decode attention,
  * the shared-memory carve-up (activation staging, the stream ring's stage size and depth),
  * the static order of tasks on every SM,
  * the kernel's features: which multiply, how the ring is filled, where attention's K/V rows
    come from, how attention's splits are combined (Plan's fields after `notes`, decided by
    ada_mk.search.kernel_rules).

The kernel only executes it: which SM runs which task, in which order, waiting on which counter,
is a table compiled into the kernel. Dependencies are a fixed function of the task (see
`task_deps`); the device code implements the same rule.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import KW_ONLY, asdict, dataclass, field

from ..config import DeployConfig, ModelConfig
from ..config.deploy import WEIGHT_FORMATS, weights_suffix  # noqa: F401  (WEIGHT_FORMATS: re-exported)

THREADS = 256
WARPS = THREADS // 32

# The fused linear stages of one layer, in execution order, and the LM head.
LINEAR_KINDS = ("qkv", "o", "gate_up", "down", "lm_head")
KIND_IDS = {"qkv": 0, "attn": 1, "o": 2, "gate_up": 3, "down": 4, "lm_head": 5, "argmax": 6}

BATCHED_CHUNK_ROWS = 16  # rows of a batched multiply's chunk: the MMA's M (adamk/mma.cuh, TileDot)

# The fields of Plan that switch the kernel's code paths (kernel_rules.decide_kernel_features).
KERNEL_FEATURES = ("batched", "bulk_ring", "kv_ring", "kv_ring_positions", "kv_ring_slots", "kv_pieces",
                   "attn_polled")


def align16(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of 16 (shared-memory regions start 16-byte aligned)."""
    return -(-nbytes // 16) * 16


@dataclass(frozen=True)
class LinearTiling:
    """How one fused linear stage is cut into tasks.

    A task computes `rows` output rows over one K-chunk of `k // ksplit` columns. Its weight tile
    streams through the shared-memory ring chunk by chunk. With one sequence a chunk is
    `WARPS // warps_per_row` whole rows, each reduced by `warps_per_row` warps. With the batched
    multiply (`batched`, kernel_rules.batched_multiply) every warp takes part of every
    row of a chunk: a chunk is 16 rows (the MMA's M) by `kc // warps_per_row` columns, so
    `warps_per_row` cuts a row group's columns into that many chunks (`kparts`). `tiled`: the
    packed weights hold the batched multiply's chunks one after the other, each laid out as its
    ring slot (kernel_rules.tiled_weights: where bulk copies fill the batched multiply's ring,
    Plan.bulk_ring, one copy a chunk, and always with 8-bit weights; see
    ada_mk.search.layout.Segment.tiling).

    `weights` is the format the stage's weights stream in (WEIGHT_FORMATS): bf16, 8-bit codes
    (fp8: E4M3; int8: symmetric integers) with float32 scales, one per row (`group` 0) or per
    `group` input columns of a row, or 4-bit codes (int4) with a bf16 (scale, offset) pair per
    `group` input columns of a row. Quantized weights are always tiled: each chunk carries its codes
    and then its scales (docs/quantized-weights.md, "The packed chunk").
    """

    n: int
    k: int
    rows: int
    ksplit: int
    warps_per_row: int
    batched: bool = False
    tiled: bool = False
    weights: str = "bf16"
    group: int = 0

    @property
    def quantized(self) -> bool:
        return self.weights != "bf16"

    @property
    def elem_bytes(self) -> float:
        """Bytes of one weight element as it streams: 2 (bf16), 1 (8-bit), 0.5 (int4)."""
        return {"bf16": 2, "int4": 0.5}.get(self.weights, 1)

    @property
    def column_block(self) -> int:
        """The columns a chunk (and a task) is cut in whole multiples of: 8 (a 16-byte vector of
        bf16); with quantized weights a 64-column block (the 4 lanes of an MMA's k, 16 bytes each
        with 8-bit codes, 8 with 4-bit) and whole scale groups."""
        if not self.quantized:
            return 8
        return math.lcm(64, self.group) if self.group else 64

    @property
    def scales_per_row(self) -> int:
        """Scales one row of a chunk carries (quantized weights): its groups, or 1 (per row). With
        int4 each is a (scale, offset) pair."""
        if not self.quantized:
            return 0
        return self.chunk_cols // self.group if self.group else 1

    @property
    def code_bytes(self) -> int:
        """Bytes of one chunk's weights or codes, before its scales."""
        return int(self.chunk_rows * self.chunk_cols * self.elem_bytes)

    @property
    def kc(self) -> int:
        return self.k // self.ksplit

    @property
    def tiles(self) -> int:
        return -(-self.n // self.rows)

    @property
    def tasks(self) -> int:
        return self.tiles * self.ksplit

    @property
    def chunk_rows(self) -> int:
        return BATCHED_CHUNK_ROWS if self.batched else WARPS // self.warps_per_row

    @property
    def kparts(self) -> int:
        """Chunks across one row group's columns (1 with one sequence)."""
        return self.warps_per_row if self.batched else 1

    @property
    def chunk_cols(self) -> int:
        return self.kc // self.kparts

    @property
    def whole_column_blocks(self) -> bool:
        """Whether its chunks cut the K-chunk into equal blocks of whole column blocks
        (column_block; with one sequence and bf16 weights always: a chunk there is whole rows)."""
        if not self.batched and not self.quantized:
            return True
        return self.kc % self.kparts == 0 and self.chunk_cols % self.column_block == 0

    @property
    def chunks(self) -> int:
        return self.rows // self.chunk_rows * self.kparts

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk as it streams: its weights, and with quantized weights their scales
        after them (float32 with 8-bit codes, a bf16 scale and offset with int4: 4 bytes either
        way), padded to 16 bytes (one bulk copy)."""
        if not self.quantized:
            return self.code_bytes
        return align16(self.code_bytes + 4 * self.chunk_rows * self.scales_per_row)

    @property
    def task_bytes(self) -> int:
        """Bytes one task of a whole tile streams: its chunks (weights, and scales with quantized weights)."""
        return self.rows_bytes(self.rows)

    def rows_bytes(self, rows: int) -> int:
        """Bytes a task streams for `rows` of its output rows (a tile's rows; the last tile may have
        fewer): bf16, rows * kc * 2; quantized, the packed chunks holding those rows (whole chunks
        of chunk_rows rows, zero-padded, codes and scales: chunk_bytes). task_bytes for a whole tile."""
        if not self.quantized:
            return rows * self.kc * 2
        return -(-rows // self.chunk_rows) * self.kparts * self.chunk_bytes

    @property
    def stage_bytes(self) -> int:
        """Ring slot bytes one chunk needs: the chunk itself. (The batched multiply's 8-row loads
        hit both halves of the banks: rows of whole 128-byte lines swap the 64-byte halves of each
        line in odd rows, as a cp.async ring copies them or as tiled weights lie; rows of an odd
        number of 64-byte halves alternate by themselves. adamk/tasks.cuh, tile_offset.)"""
        return self.chunk_bytes

    @property
    def x_row(self) -> int:
        """Elements between two sequences' rows of the staged activations: kc, plus 64 bytes of
        padding with the batched multiply so its 8-row loads hit both halves of the banks
        (adamk/tasks.cuh, x_offset)."""
        return self.kc + (32 if self.batched else 0)

    def red_floats(self, batch: int) -> int:
        """Shared floats its reduction needs: [rows][warps_per_row][B] per-warp partials, or with
        the batched multiply [rows][B] results plus two chunks' [WARPS][chunk_rows][B] partials."""
        if self.batched:
            return (self.rows + 2 * WARPS * self.chunk_rows) * batch
        return self.rows * self.warps_per_row * batch

    def k_range(self, split: int) -> tuple[int, int]:
        return split * self.kc, (split + 1) * self.kc

    def row_range(self, tile: int) -> tuple[int, int]:
        return tile * self.rows, min((tile + 1) * self.rows, self.n)


def fitting_wpr(n: int, k: int, ksplit: int, batched: bool, target: int, *, weights: str = "bf16",
                group: int = 0) -> int:
    """The fewest warps per row whose chunk of an (n x k, K-split `ksplit`) stage in `weights`
    (scale group `group`) brings at most `target` bytes and cuts its columns into whole blocks
    (LinearTiling.whole_column_blocks). If none fits: 8 with bf16 weights; with quantized weights
    the most warps per row that cut whole blocks (1 when none does)."""
    whole = []
    for wpr in (1, 2, 4, 8):
        t = LinearTiling(n, k, 1, ksplit, wpr, batched, weights=weights, group=group)
        if t.whole_column_blocks:
            if t.chunk_bytes <= target:
                return wpr
            whole.append(wpr)
    if weights == "bf16":
        return 8
    return whole[-1] if whole else 1


def column_block(weights: str, group: int) -> int:
    """The columns a K-chunk of a stage in `weights` (scale group `group`) is a multiple of:
    LinearTiling.column_block (8 for bf16; lcm(64, group) for 8-bit and 4-bit)."""
    return LinearTiling(1, 1, 1, 1, 1, weights=weights, group=group).column_block


@dataclass(frozen=True)
class Task:
    """One unit of work: `kind` at `layer` (0 for the LM head and argmax), local `index`.

    Linear stages number their tasks tile * ksplit + split; attention (b * kv_heads + g) *
    splits + j; argmax has one task.
    """

    kind: str
    layer: int
    index: int


@dataclass(frozen=True)
class Run:
    """Tasks kind/layer with indices start, start + stride, ... (count of them), on one SM."""

    kind: str
    layer: int
    start: int
    stride: int
    count: int

    def tasks(self) -> list[Task]:
        return [Task(self.kind, self.layer, self.start + i * self.stride) for i in range(self.count)]


@dataclass
class Plan:
    """Everything the generated kernel does for one (model, deploy). The search fills the fields
    up to `notes`; kernel_rules.decide_kernel_features decides the kernel features after them from
    those (None: not decided yet; such a plan has no size, no hash and renders nothing)."""

    model: ModelConfig
    deploy: DeployConfig
    sms: int
    threads: int
    tilings: dict[str, LinearTiling]
    attn_splits: int
    stages: int
    stage_bytes: int
    schedule: list[list[Run]]  # per SM, in execution order
    strategy: str = "round-robin"
    notes: dict = field(default_factory=dict)
    _: KW_ONLY
    # ---- kernel features (KERNEL_FEATURES; kernel_rules says why each takes its value) ---------
    batched: bool | None = None  # the batched multiply: every warp takes all sequences (Cfg::BATCHED)
    bulk_ring: bool | None = None  # bulk copies (TMA) fill the stream ring (Cfg::BULK_RING)
    kv_ring: bool | None = None  # attention's cached K/V rows come through the stream ring (Cfg::KV_RING)
    kv_ring_positions: int | None = None  # with kv_ring: positions a ring slot holds (Cfg::KV_PIECE), else 0
    kv_ring_slots: int | None = None  # with kv_ring: ring slots an attention task takes (Cfg::KV_SLOTS), else 0
    kv_pieces: tuple[int, int] | None = None  # (positions, buffers) of attention's bulk-copied K/V
    #                                           pieces in shared memory (Cfg::ATTN_PIECE, ATTN_BUFS); (0, 0): none
    attn_polled: bool | None = None  # the last split polls the others' partials (Cfg::ATTN_POLLED)

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.deploy.batch

    @property
    def weights(self) -> str:
        """The format the linear stages' weights stream in (DeployConfig.weights, WEIGHT_FORMATS)."""
        return self.deploy.weights

    @property
    def weights_group(self) -> int:
        """Input columns per float32 scale of 8-bit weights, 0 for one per row (DeployConfig)."""
        return self.deploy.weights_group

    @property
    def x_bytes(self) -> int:
        """Shared memory staging the activation chunk a linear task multiplies (bf16, [B][kc])."""
        return self.batch * max(t.x_row for t in self.tilings.values()) * 2

    @property
    def kv_region_bytes(self) -> int:
        """Shared memory that attention's K/V pieces (kv_pieces) may borrow: the staged activations'
        and the reductions' regions (SMEM_X .. SMEM_ATTN), which attention does not use."""
        return align16(self.x_bytes) + align16(self.red_bytes)

    @property
    def kernel_features(self) -> dict:
        """The kernel features by name (KERNEL_FEATURES)."""
        return {name: getattr(self, name) for name in KERNEL_FEATURES}

    @property
    def in_stage_order(self) -> bool:
        """Whether every SM's runs follow the step's stage order: layer by layer, QKV to down,
        then the LM head and argmax."""
        L = self.model.num_hidden_layers
        for runs in self.schedule:
            at = [(L if r.kind in ("lm_head", "argmax") else r.layer, KIND_IDS[r.kind]) for r in runs]
            if any(a > b for a, b in zip(at, at[1:])):
                return False
        return True

    @property
    def barrier_bytes(self) -> int:
        """mbarriers: the staged activations' bulk copies, one per ring slot (bulk_ring) and one
        per K/V buffer of batched attention (kv_pieces)."""
        if self.bulk_ring is None or self.kv_pieces is None:
            raise ValueError("the barriers follow bulk_ring and kv_pieces: apply kernel_rules.decide_kernel_features")
        return 8 * (1 + (self.stages if self.bulk_ring else 0) + self.kv_pieces[1])

    @property
    def red_bytes(self) -> int:
        """Shared memory for the partial dot products (LinearTiling.red_floats)."""
        return max(t.red_floats(self.batch) for t in self.tilings.values()) * 4

    @property
    def attn_bytes(self) -> int:
        """Attention scratch, shared with the LM head's per-row results and, on Hopper, with the
        RMSNorm weights that a QKV, gate/up or LM head task copies in before its wait (bf16, one
        K-chunk; adamk/activations.cuh, prefetch_gamma): never live at the same time."""
        m, B = self.model, self.batch
        attention = m.group_size * m.head_dim + 2 * m.head_dim + WARPS * m.group_size * (m.head_dim + 2)
        lm_rows = self.tilings["lm_head"].rows * B
        gamma = max(self.tilings[k].kc for k in ("qkv", "gate_up", "lm_head")) // 2  # in floats
        return 4 * max(attention, lm_rows, gamma)

    @property
    def misc_bytes(self) -> int:
        # norm: per-warp sums and rstd for each sequence; argmax: per-warp best value and index
        return 4 * max((WARPS + 1) * self.batch, 2 * WARPS)

    def smem_layout(self) -> dict[str, int]:
        """Byte offsets of the shared-memory regions, and the total."""
        out, cursor = {}, 0
        for name, size in (("SMEM_RING", self.stages * self.stage_bytes), ("SMEM_X", self.x_bytes),
                           ("SMEM_RED", self.red_bytes), ("SMEM_ATTN", self.attn_bytes),
                           ("SMEM_MISC", self.misc_bytes), ("SMEM_BARRIER", self.barrier_bytes)):
            out[name] = cursor
            cursor += align16(size)
        out["SMEM_TOTAL"] = cursor
        return out

    @property
    def smem_bytes(self) -> int:
        return self.smem_layout()["SMEM_TOTAL"]

    def tasks_of(self, kind: str) -> int:
        m, b = self.model, self.batch
        if kind in self.tilings:
            return self.tilings[kind].tasks
        if kind == "attn":
            return b * m.num_key_value_heads * self.attn_splits
        return 1  # argmax

    def all_tasks(self) -> list[Task]:
        """Every task of one decode step, in a topological order."""
        out: list[Task] = []
        for layer in range(self.model.num_hidden_layers):
            for kind in ("qkv", "attn", "o", "gate_up", "down"):
                out += [Task(kind, layer, i) for i in range(self.tasks_of(kind))]
        out += [Task("lm_head", 0, i) for i in range(self.tasks_of("lm_head"))]
        out.append(Task("argmax", 0, 0))
        return out

    def sm_tasks(self, sm: int) -> list[Task]:
        return [t for run in self.schedule[sm] for t in run.tasks()]

    # ---- identity ------------------------------------------------------------------------
    def schedule_digest(self) -> dict:
        """The schedule in brief: the sha256 of every SM's runs (canonical JSON of
        [[[kind, layer, start, stride, count], ...] per SM]), the number of runs and the tasks of
        each SM. The schedule itself is the kernel's table (render.schedule_table)."""
        runs = [[[r.kind, r.layer, r.start, r.stride, r.count] for r in sm] for sm in self.schedule]
        blob = json.dumps(runs, separators=(",", ":")).encode()
        return {"sha256": hashlib.sha256(blob).hexdigest(), "runs": sum(len(sm) for sm in self.schedule),
                "tasks_per_sm": [sum(r.count for r in sm) for sm in self.schedule]}

    def to_json(self) -> dict:
        """The plan as plan.json has it: every decision (the notes are commentary). 8-bit plans
        name their weights format and scale group at the top ("weights", "weights_group"); a bf16
        plan's document has neither key, so bf16 plans keep their plan.json and hash (every
        tiling records its format either way)."""
        undecided = [name for name in KERNEL_FEATURES if getattr(self, name) is None]
        if undecided:
            raise ValueError(f"plan with undecided kernel features {undecided}: "
                             "apply kernel_rules.decide_kernel_features first")
        return {
            "model": self.model.to_dict(),
            "gpu": self.deploy.gpu.name,
            "arch": self.deploy.gpu.arch,
            "batch": self.batch,
            "max_context": self.deploy.max_context,
            "dtype": self.deploy.dtype,
            **({"weights": self.weights, "weights_group": self.weights_group} if self.weights != "bf16" else {}),
            "sms": self.sms,
            "threads": self.threads,
            "strategy": self.strategy,
            "tilings": {k: asdict(v) for k, v in self.tilings.items()},
            "attn_splits": self.attn_splits,
            "stages": self.stages,
            "stage_bytes": self.stage_bytes,
            "smem_bytes": self.smem_bytes,
            "kernel_features": {k: list(v) if isinstance(v, tuple) else v for k, v in self.kernel_features.items()},
            "schedule": self.schedule_digest(),
            "notes": self.notes,
        }

    @property
    def plan_hash(self) -> str:
        decisions = {k: v for k, v in self.to_json().items() if k != "notes"}  # notes are commentary
        blob = json.dumps(decisions, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    @property
    def file_stem(self) -> str:
        """The generated files' name, stable per (model, GPU, batch, weights format): a changed
        plan reads as a modification of the same files. CUTLASS-style: named by its parameters;
        8-bit plans end in their format (config.deploy.weights_suffix: `_fp8`, `_int8g128`)."""
        safe = self.model.name.replace(".", "_").replace("-", "_")
        suffix = weights_suffix(self.weights, self.weights_group)
        return f"adamk_{safe}_{self.deploy.gpu.name.lower()}_bs{self.batch}{suffix}"

    @property
    def kernel_name(self) -> str:
        """The kernel's symbol: the file stem and the plan hash, unique per plan, so that kernels of
        several plans load side by side."""
        return f"{self.file_stem}_{self.plan_hash}"


def compress_runs(tasks: list[Task]) -> list[Run]:
    """Encode one SM's ordered task list as arithmetic runs (exact, any order survives)."""
    runs: list[list] = []  # [kind, layer, start, stride, count] (made Runs at the end: cheaper to grow)
    for t in tasks:
        if runs:
            r = runs[-1]
            if r[0] == t.kind and r[1] == t.layer:
                if r[4] == 1 and t.index > r[2]:
                    r[3], r[4] = t.index - r[2], 2
                    continue
                if t.index == r[2] + r[4] * r[3] and r[3] > 0:
                    r[4] += 1
                    continue
        runs.append([t.kind, t.layer, t.index, 1, 1])
    return [Run(*r) for r in runs]
