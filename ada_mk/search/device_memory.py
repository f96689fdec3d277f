"""What a plan's buffers take in device memory, and whether they fit the target GPU's.

MegaKernelEngine (and adamk_create) allocate, per plan: the packed weights, the scratch, the
counters, and the K and V caches of max_context positions for every layer and sequence. adamk-gen
and adamk-run refuse a plan whose buffers do not fit the card (with the sizes) before writing or
allocating anything, rather than fail in cuMemAlloc or, worse, generate a kernel no card of that
kind can load.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanError
from .layout import Layout, make_layout
from .plan import Plan

# Device memory the CUDA context, the loaded module and the allocator keep besides the buffers.
CONTEXT_RESERVE_BYTES = 2**30


@dataclass(frozen=True)
class DeviceBytes:
    weights: int
    kv_cache: int
    scratch: int  # scratch and counters

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.scratch


def device_bytes(plan: Plan, layout: Layout | None = None) -> DeviceBytes:
    """The bytes of the plan's device buffers (as MegaKernelEngine allocates them)."""
    layout = layout or make_layout(plan)
    kv = 2 * layout.kv_elems_per_layer * plan.model.num_hidden_layers * 2  # K and V, bf16
    return DeviceBytes(layout.weights.total_bytes, kv, layout.scratch.total_bytes + layout.counters.total_bytes)


def check_fits_device(plan: Plan, layout: Layout | None = None) -> DeviceBytes:
    """The plan's device bytes; PlanError (one line, with the sizes) where they exceed the target
    GPU's memory less CONTEXT_RESERVE_BYTES. GPUs of unknown memory are not checked."""
    need = device_bytes(plan, layout)
    gpu, d = plan.deploy.gpu, plan.deploy
    have = gpu.memory_bytes - CONTEXT_RESERVE_BYTES
    if gpu.memory_bytes and need.total > have:
        raise PlanError(
            f"{plan.model.name} on {gpu.name}: weights {need.weights / 1e9:.2f} GB + KV cache "
            f"{need.kv_cache / 1e9:.2f} GB (batch {d.batch}, max_context {d.max_context}) + scratch "
            f"{need.scratch / 1e9:.2f} GB = {need.total / 1e9:.2f} GB do not fit the card's "
            f"{gpu.memory_bytes / 1e9:.0f} GB (less {CONTEXT_RESERVE_BYTES / 2**30:.0f} GiB for the CUDA "
            f"context): lower --max-context or --batch, use 8-bit weights (--weights-format), or a larger GPU")
    return need


__all__ = ["CONTEXT_RESERVE_BYTES", "DeviceBytes", "device_bytes", "check_fits_device"]
