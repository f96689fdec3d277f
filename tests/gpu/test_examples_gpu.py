"""The C and ctypes examples (examples/c, examples/python/ctypes_decode.py) on the GPU: both decode
asynchronously on their own stream (adamk_decode_async, one adamk_synchronize) and must print the
greedy tokens the synchronous API gives for the same prompt: SmolLM2-135M with random weights.

The C example is built on the CPU machine (nvcc's CUDA headers live there) into the build cache
that travels here:
    ADAMK_CACHE=.devbuild python -m tests.gpu.test_examples_gpu      # prebuild
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ada_mk.codegen.build import Artifacts, cache_root
from ada_mk.runtime.capi import SharedLibrary

from .test_capi_gpu import PROMPT, library_for, make_smollm2, packed, plan, weights  # noqa: F401

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 12


def example_binary(art: Artifacts) -> Path:
    """examples/c built against `art` in the build cache (built here when missing), keyed by the
    example's sources too."""
    import hashlib

    from tests.test_examples import EXAMPLE, build_c_example

    key = hashlib.sha256(b"".join((EXAMPLE / f).read_bytes() for f in ("main.c", "Makefile"))).hexdigest()[:12]
    out = cache_root() / "examples" / f"{art.directory.name}-{key}" / "decode"
    return out if out.exists() else build_c_example(art.directory, out.parent)


@pytest.fixture(scope="module")
def packed_file(packed: np.ndarray, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "weights.bin"
    packed.tofile(path)
    return path


@pytest.fixture(scope="module")
def expected(plan, packed) -> list[int]:
    """Sequence 0's greedy continuation of PROMPT through the synchronous API."""
    lib = SharedLibrary(library_for(plan).library)
    try:
        lib.create(packed)
        B = plan.batch
        nxt = None
        for t, tok in enumerate(PROMPT):
            nxt, _ = lib.decode(np.full(B, tok), np.full(B, t))
        out = [int(nxt[0])]
        for i in range(NEW_TOKENS - 1):
            nxt, _ = lib.decode(nxt, np.full(B, len(PROMPT) + i))
            out.append(int(nxt[0]))
        return out
    finally:
        lib.close()


def test_c_example_decodes_asynchronously(plan, packed_file, expected) -> None:
    art = library_for(plan)
    binary = example_binary(art)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{art.directory}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    r = subprocess.run([str(binary), str(packed_file), str(NEW_TOKENS), *map(str, PROMPT)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [int(x) for x in r.stdout.split()] == expected


def test_ctypes_example_decodes_asynchronously(plan, packed_file, expected) -> None:
    art = library_for(plan)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "ctypes_decode.py"), "--library",
                        str(art.library), "--packed", str(packed_file), "--ids", *map(str, PROMPT), "-n",
                        str(NEW_TOKENS)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    print(r.stderr.strip().splitlines()[-1])
    assert [int(x) for x in r.stdout.split()] == expected


if __name__ == "__main__":
    a = library_for(make_smollm2(), log=lambda s: print("  " + s[:160], file=sys.stderr))
    print(example_binary(a), file=sys.stderr)
