"""The GPUs a kernel can be generated for, with the figures the planner uses.

Each figure names its source: the vendor's datasheet or tuning guide, or a measurement on this
project's lent machines (then marked "measured").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    name: str  # "L20", "H100", ...
    arch: str  # "sm_89", "sm_90", "sm_80"
    sms: int
    smem_per_block: int  # bytes, the opt-in maximum for dynamic shared memory of one block
    smem_per_sm: int  # bytes
    regs_per_sm: int  # 32-bit registers
    l2_bytes: int
    mem_bandwidth: float  # bytes/s, vendor figure
    read_bandwidth: float  # bytes/s the planner assumes for streaming reads
    cp_async: bool
    tma: bool
    memory_bytes: int = 0  # device memory, vendor figure (decimal GB); 0: unknown
    sources: tuple[str, ...] = ()

    @property
    def nvcc_arch(self) -> str:
        """The -gencode target: sm_90a so that Hopper-only instructions are allowed."""
        return "sm_90a" if self.arch == "sm_90" else self.arch


KB = 1024
MiB = 1024 * 1024
GB_S = 1e9  # vendors quote bandwidth in decimal GB/s

# Per-architecture limits, from the CUDA C++ Programming Guide, "Compute Capabilities" table
# ("Technical Specifications per Compute Capability"): maximum shared memory per SM, the opt-in
# maximum per block (always 1 KB less than per SM: the driver reserves 1 KB per block), and
# 64K 32-bit registers per SM for all three.
_ARCH_LIMITS = {
    #        smem_per_block, smem_per_sm, regs_per_sm
    "sm_80": (163 * KB, 164 * KB, 65536),
    "sm_89": (99 * KB, 100 * KB, 65536),
    "sm_90": (227 * KB, 228 * KB, 65536),
}
_GUIDE = "smem/regs: CUDA C++ Programming Guide, Compute Capabilities table ({arch})"

# Where we have no measurement, the planner assumes this fraction of the vendor bandwidth for
# streaming reads (what a good copy kernel reaches on GDDR6/HBM2e in practice).
READ_FRACTION = 0.85
_MEASURED = "read_bandwidth: measured on the lent cards (docs/experiments.md, \"Read bandwidth of the lent cards\")"
_ASSUMED = f"read_bandwidth: assumed {READ_FRACTION} x vendor mem_bandwidth (not measured)"


def _spec(
    name: str,
    arch: str,
    *,
    sms: int,
    l2_mib: int,
    bw_gb_s: float,
    measured_read_gb_s: float | None,
    memory_gb: int,
    sources: tuple[str, ...],
) -> GpuSpec:
    smem_block, smem_sm, regs = _ARCH_LIMITS[arch]
    hopper = arch == "sm_90"
    if measured_read_gb_s is None:
        read, read_src = float(round(READ_FRACTION * bw_gb_s * GB_S)), _ASSUMED
    else:
        read, read_src = measured_read_gb_s * GB_S, _MEASURED
    return GpuSpec(
        name=name,
        arch=arch,
        sms=sms,
        smem_per_block=smem_block,
        smem_per_sm=smem_sm,
        regs_per_sm=regs,
        l2_bytes=l2_mib * MiB,
        mem_bandwidth=bw_gb_s * GB_S,
        read_bandwidth=read,
        cp_async=True,  # sm_80 and later
        tma=hopper,
        memory_bytes=memory_gb * 10**9,
        sources=sources + (_GUIDE.format(arch=arch), read_src),
    )


GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        _spec(
            "L20", "sm_89", sms=92, l2_mib=96, bw_gb_s=864, measured_read_gb_s=None, memory_gb=48,
            sources=("sms, L2, 864 GB/s, 48 GB: NVIDIA L20 datasheet (48 GB GDDR6)",),
        ),
        _spec(
            "L40S", "sm_89", sms=142, l2_mib=96, bw_gb_s=864, measured_read_gb_s=None, memory_gb=48,
            sources=("sms, L2, 864 GB/s, 48 GB: NVIDIA L40S datasheet and Ada Lovelace architecture whitepaper",),
        ),
        _spec(
            "RTX4090", "sm_89", sms=128, l2_mib=72, bw_gb_s=1008, measured_read_gb_s=None, memory_gb=24,
            sources=("sms, 72 MB L2, 1008 GB/s, 24 GB: NVIDIA Ada Lovelace (AD102) architecture whitepaper, RTX 4090 column",),
        ),
        _spec(
            "A100", "sm_80", sms=108, l2_mib=40, bw_gb_s=2039, measured_read_gb_s=None, memory_gb=80,
            sources=(
                "A100 80GB SXM4: 2039 GB/s, 80 GB from the NVIDIA A100 datasheet",
                "sms 108, L2 40 MB: NVIDIA A100 Tensor Core GPU architecture whitepaper (the 80 GB part keeps 40 MB L2)",
            ),
        ),
        _spec(
            "H100", "sm_90", sms=132, l2_mib=50, bw_gb_s=3350, measured_read_gb_s=3021, memory_gb=80,
            sources=(
                "H100 SXM5: 3.35 TB/s, 80 GB from the NVIDIA H100 datasheet",
                "sms 132, L2 50 MB: NVIDIA H100 Tensor Core GPU architecture whitepaper (SXM5)",
            ),
        ),
        _spec(
            "H200", "sm_90", sms=132, l2_mib=50, bw_gb_s=4800, measured_read_gb_s=4484, memory_gb=141,
            sources=(
                "H200 SXM: 4.8 TB/s, 141 GB from the NVIDIA H200 datasheet",
                "sms 132, L2 50 MB: vendor figure (same GH100 die as H100 SXM5); PyTorch's"
                " L2_cache_size on the lent H200 reports 60 MB -- we keep the conservative 50 MB",
            ),
        ),
    )
}

# A target given by architecture maps to one representative GPU of that architecture.
ARCH_ALIASES: dict[str, str] = {
    "sm_80": "A100",
    "sm_89": "L20",
    "sm_90": "H100",
    "sm_90a": "H100",
}

# Other spellings users (and torch.cuda.get_device_name()) use; keys are normalized (see _norm).
_NAME_ALIASES: dict[str, str] = {
    "4090": "RTX4090",
    "geforcertx4090": "RTX4090",
    "a10080gb": "A100",
    "a100sxm": "A100",
    "a100sxm480gb": "A100",
    "h100sxm": "H100",
    "h100sxm5": "H100",
    "h10080gbhbm3": "H100",
    "h200sxm": "H200",
    "h200141gb": "H200",
}


def _norm(name: str) -> str:
    """Case, spaces, '-' and '_' don't matter; a leading "NVIDIA" is dropped."""
    key = re.sub(r"[\s_\-]+", "", name.lower())
    return key.removeprefix("nvidia")


_LOOKUP: dict[str, str] = {
    **{_norm(n): n for n in GPUS},
    **{_norm(a): n for a, n in ARCH_ALIASES.items()},
    **_NAME_ALIASES,
}


def find_gpu(name_or_arch: str) -> GpuSpec | None:
    """The GpuSpec for a GPU name ("H100", "rtx 4090", "NVIDIA H100 80GB HBM3") or an
    architecture ("sm_90"); None when unknown."""
    if not isinstance(name_or_arch, str):
        return None
    target = _LOOKUP.get(_norm(name_or_arch))
    return None if target is None else GPUS[target]


def known_gpus_text() -> str:
    """For error and help messages: "L20, L40S, ... or an arch sm_80, sm_89, sm_90"."""
    arches = ", ".join(a for a in ARCH_ALIASES if a != "sm_90a")
    return f"{', '.join(GPUS)} or an arch {arches}"


def lookup_gpu(name_or_arch: str) -> GpuSpec:
    """Like find_gpu, but an unknown name raises ConfigError."""
    spec = find_gpu(name_or_arch)
    if spec is None:
        raise ConfigError(f"unknown GPU; expected one of {known_gpus_text()}", field="gpu", value=name_or_arch)
    return spec


def detect_gpu() -> str | None:
    """The name of CUDA device 0 ("NVIDIA H100 80GB HBM3"), or None without a GPU/driver."""
    try:
        from cuda.bindings import driver

        if driver.cuInit(0)[0] != driver.CUresult.CUDA_SUCCESS:
            return None
        err, dev = driver.cuDeviceGet(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return None
        err, name = driver.cuDeviceGetName(64, dev)
        return name.split(b"\0", 1)[0].decode() if err == driver.CUresult.CUDA_SUCCESS else None
    except Exception:  # noqa: BLE001 - no driver: cuda-python raises loader errors of its own
        return None
