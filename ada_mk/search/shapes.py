"""The linear stages' matrix shapes, and which tilings of them the kernel can run."""
from __future__ import annotations

from ..config import ModelConfig
from .plan import LinearTiling


def linear_shapes(model: ModelConfig) -> dict[str, tuple[int, int]]:
    """(output rows, reduction length) of each fused linear stage."""
    m = model
    return {
        "qkv": (m.q_size + 2 * m.kv_size, m.hidden_size),
        "o": (m.hidden_size, m.q_size),
        "gate_up": (2 * m.intermediate_size, m.hidden_size),
        "down": (m.hidden_size, m.intermediate_size),
        "lm_head": (m.vocab_size, m.hidden_size),
    }


def valid_splits(kind: str, k: int, max_split: int = 64, block: int = 8) -> list[int]:
    """The K-splits of a stage with reduction length k that cut it into whole column blocks of
    `block` columns: 8, whole 16-byte vectors of bf16; with 8-bit weights plan.column_block (the
    LM head is never split: its argmax needs full sums; [] where its K is no whole blocks)."""
    if kind == "lm_head":
        return [1] if block == 8 or k % block == 0 else []
    return [s for s in range(1, max_split + 1) if k % s == 0 and (k // s) % block == 0]


def tiling_ok(kind: str, t: LinearTiling) -> str | None:
    """Why a tiling is not one the kernel can run, or None."""
    if t.warps_per_row not in (1, 2, 4, 8):
        return f"warps_per_row {t.warps_per_row} not in 1, 2, 4, 8"
    if t.rows <= 0 or t.rows % t.chunk_rows:
        return f"rows {t.rows} not a positive multiple of the chunk's {t.chunk_rows} rows"
    if t.ksplit <= 0 or t.k % t.ksplit or (t.k // t.ksplit) % 8:
        return f"ksplit {t.ksplit} does not cut K={t.k} into multiples of 8"
    if t.quantized and t.kc % t.column_block:
        return (f"ksplit {t.ksplit} leaves K-chunks of {t.kc} columns, not whole {t.column_block}-column blocks of"
                f" {t.weights} weights (group {t.group})")
    if not t.whole_column_blocks:
        return (f"warps_per_row {t.warps_per_row} does not cut the {'batched ' if t.batched else ''}chunk's"
                f" {t.kc} columns into multiples of {t.column_block}")
    if t.quantized and not t.tiled:
        return f"{t.weights} weights are always tiled (docs/quantized-weights.md, \"The packed chunk\")"
    if kind == "gate_up" and t.rows % 2:
        return f"rows {t.rows} odd: a gate/up task holds whole (gate, up) row pairs"
    if kind == "lm_head" and t.ksplit != 1:
        return "the LM head cannot be K-split (its argmax needs full sums)"
    return None


__all__ = ["linear_shapes", "valid_splits", "tiling_ok"]
