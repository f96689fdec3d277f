"""nvcc: generated source -> one fatbin (for cuda-python) and one C-ABI shared library.

Builds are cached by a hash of the sources, the device headers and the flags, under
$ADAMK_CACHE (default ~/.cache/ada_mk/build/<hash>/), so rebuilding an unchanged kernel is free.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .render import TEMPLATES, Source

ARCH_FLAGS = {
    "sm_80": "-gencode=arch=compute_80,code=sm_80",
    "sm_89": "-gencode=arch=compute_89,code=sm_89",
    # sm_90a: the Hopper-only instructions; the -gencode form is what nvcc 13.0 accepts for it.
    "sm_90a": "-gencode=arch=compute_90a,code=sm_90a",
    "sm_90": "-gencode=arch=compute_90,code=sm_90",
}


class BuildError(RuntimeError):
    """nvcc failed or is missing; the message carries its output."""


@dataclass(frozen=True)
class Artifacts:
    fatbin: Path
    library: Path | None
    header: Path | None
    directory: Path


def cutlass_include() -> str:
    """CUTLASS/CuTe headers shipped by the nvidia-cutlass wheel (or $CUTLASS_INCLUDE)."""
    if os.environ.get("CUTLASS_INCLUDE"):
        return os.environ["CUTLASS_INCLUDE"]
    try:
        import cutlass_library
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BuildError("CUTLASS headers not found: pip install nvidia-cutlass, or set CUTLASS_INCLUDE") from e
    return os.path.join(cutlass_library.source_path, "include")


def cache_root() -> Path:
    return Path(os.environ.get("ADAMK_CACHE", Path.home() / ".cache" / "ada_mk")) / "build"


def _headers_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((TEMPLATES / "adamk").glob("*.cuh")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def nvcc_flags(archs: list[str], profile: bool = False, defines: tuple[str, ...] = ()) -> list[str]:
    """Flags that decide the output (include paths come separately: they differ by machine).
    `defines` are extra macros, such as the ADAMK_ABLATE_* diagnostics of benchmarks/ablation.py."""
    flags = ["-std=c++17", "-O3", "--threads", "0"] + [ARCH_FLAGS[a] for a in archs]
    if profile:
        flags.append("-DADAMK_PROFILE")
    flags += [f"-D{d}" for d in defines]
    return flags


def build(source: Source, archs: list[str], *, profile: bool = False,
          library: bool = True, nvcc: str = "nvcc", log=None, defines: tuple[str, ...] = ()) -> Artifacts:
    """Compile (or fetch from the cache) the kernel for every arch in `archs`."""
    for a in archs:
        if a not in ARCH_FLAGS:
            raise BuildError(f"unknown arch {a!r}: expected one of {', '.join(ARCH_FLAGS)}")
    flags = nvcc_flags(archs, profile, defines)
    key = hashlib.sha256()
    kernel_files = {f"{source.name}.cu", f"{source.name}.schedule.inc"}
    for name in sorted(source.files):  # a fatbin does not depend on the host code
        if library or name in kernel_files:
            key.update(name.encode())
            key.update(source.files[name].encode())
    key.update(_headers_digest().encode())
    key.update(" ".join(flags).encode())
    key.update(b"library" if library else b"fatbin")
    out = cache_root() / f"{source.name}-{key.hexdigest()[:16]}"
    stem = source.name + ("_profile" if profile else "") + "".join(
        "_" + d.lower().removeprefix("adamk_").replace("=", "") for d in defines)
    fatbin, lib, hdr = out / f"{stem}.fatbin", out / f"lib{stem}.so", out / f"{source.name}.h"
    if fatbin.exists() and (not library or lib.exists()):
        return Artifacts(fatbin, lib if library else None, hdr if library else None, out)
    if shutil.which(nvcc) is None:
        raise BuildError(f"{nvcc} not found on PATH: install the CUDA toolkit")
    flags += ["-I" + str(TEMPLATES), "-I" + cutlass_include()]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        for name, text in source.files.items():
            (work / name).write_text(text)
        cu = work / f"{source.name}.cu"
        _run([nvcc, *flags, "-fatbin", "-o", str(work / fatbin.name), str(cu)], log)
        if library:
            host = work / f"{source.name}_host.cu"
            _run([nvcc, *flags, "-shared", "-Xcompiler", "-fPIC", "-cudart", "static",
                  "-o", str(work / lib.name), str(host)], log)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)  # the cache entry appears whole or not at all
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return Artifacts(fatbin, lib if library else None, hdr if library else None, out)


def _run(cmd: list[str], log) -> None:
    if log:
        log(" ".join(cmd[:1] + [c for c in cmd[1:] if not c.startswith("-I")]))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise BuildError(f"nvcc failed ({p.returncode}):\n{p.stdout}{p.stderr}")
