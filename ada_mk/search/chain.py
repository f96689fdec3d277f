"""Where a layer's fixed cost goes, from a measured profile (ada_mk.search.profile.Measured): the
chain of stages QKV -> attention -> O -> gate/up -> down -> the next layer's QKV, hop by hop.

For each stage of a layer (in chain order; the LM head after the last layer's down projection):

    hop     the stage's last "inputs ready" minus its producer stage's last end: how long the last
            consumer waited after the last producer finished (publication, the counter's trip,
            the wait's exit; negative where consumers need only part of the producer's tiles)
    stage   its last end minus its last "inputs ready": the work left once the last inputs arrived
    staging of that task: input staged minus inputs ready (RMSNorm, combine, copies)

so that a layer's span is the sum of its stages' hop + stage. Averaged over the layers, these say
which hops a layer's fixed cost (its span beyond streaming its bytes) goes to.
"""
from __future__ import annotations

from dataclasses import dataclass

from .profile import Measured

CHAIN = ("qkv", "attn", "o", "gate_up", "down")


@dataclass(frozen=True)
class Hop:
    kind: str
    layer: int
    hop_us: float
    stage_us: float
    staging_us: float  # of the stage's last-ready task


def chain_hops(measured: Measured) -> list[Hop]:
    """Every stage of the step in chain order, with its hop from its producer stage."""
    last: dict[tuple[str, int], tuple[float, float, float]] = {}  # (kind, layer) -> (ready, staged, end) maxima
    ready_task: dict[tuple[str, int], tuple[float, float]] = {}  # the last-ready task's (ready, staged)
    for t, (_, ready, staged, end) in measured.times.items():
        key = (t.kind, t.layer)
        r0, s0, e0 = last.get(key, (float("-inf"),) * 3)
        last[key] = (max(r0, ready), max(s0, staged), max(e0, end))
        if ready >= ready_task.get(key, (float("-inf"), 0.0))[0]:
            ready_task[key] = (ready, staged)
    layers = 1 + max((layer for kind, layer in last if kind in CHAIN), default=-1)
    order = [(kind, layer) for layer in range(layers) for kind in CHAIN]
    order += [k for k in (("lm_head", 0), ("argmax", 0)) if k in last]
    hops, prev_end = [], None
    for key in order:
        if key not in last:
            continue
        ready, _, end = last[key]
        r, s = ready_task[key]
        hop = 0.0 if prev_end is None else ready - prev_end
        hops.append(Hop(key[0], key[1], hop, end - ready, s - r))
        prev_end = end
    return hops


def chain_lines(measured: Measured, skip_first: int = 1) -> list[str]:
    """The mean hop, stage and staging times of each chain stage over the layers (the first
    `skip_first` layers left out: the ring is still filling there), and their sum: a layer's span."""
    hops = [h for h in chain_hops(measured) if h.kind in CHAIN]
    layers = sorted({h.layer for h in hops})
    use = [h for h in hops if h.layer >= (layers[skip_first] if len(layers) > skip_first else 0)]
    if not use:
        return []
    n = len({h.layer for h in use})
    lines = [f"measured chain per layer (mean of {n} layers from layer {use[0].layer}; hop = last inputs ready"
             f" - producer's last end, stage = last end - last inputs ready):",
             f"  {'stage':8s} {'hop':>10s} {'stage':>10s} {'staging':>10s}"]
    total = 0.0
    for kind in CHAIN:
        hs = [h for h in use if h.kind == kind]
        hop, stage, staging = (sum(getattr(h, f) for h in hs) / len(hs) for f in ("hop_us", "stage_us", "staging_us"))
        total += hop + stage
        lines.append(f"  {kind:8s} {hop:7.2f} us {stage:7.2f} us {staging:7.2f} us")
    lines.append(f"  layer span {total:.2f} us (hops {sum(h.hop_us for h in use) / n:.2f} us)")
    return lines


__all__ = ["CHAIN", "Hop", "chain_hops", "chain_lines"]
