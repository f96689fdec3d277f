"""The examples compile and link without a GPU: examples/c/ with gcc (and make) against a generated
header, the .so and the CUDA runtime, examples/python/ctypes_decode.py imports, parses and gets as
far as adamk_create; the pack tool writes exactly the buffer the kernel takes. (Run on a GPU:
tests/gpu/test_examples_gpu.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ada_mk.cli.pack import main as pack_cli
from ada_mk.checkpoints.pack import weights_layout_from_json
from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import render
from ada_mk.config import load_config
from ada_mk.runtime.weights import pack_weights
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parent.parent


def pack_main(args: list[str]) -> int:
    """adamk-pack with these arguments; its exit status."""
    return pack_cli.main(args, standalone_mode=False)
EXAMPLE = ROOT / "examples" / "c"


def cuda_home() -> Path:
    """The CUDA toolkit whose cuda_runtime.h and libcudart_static.a the C example builds with."""
    for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if p and (Path(p) / "include" / "cuda_runtime.h").exists():
            return Path(p)
    pytest.skip("no CUDA toolkit headers (set CUDA_HOME)")


def build_c_example(kernel_dir: Path, work: Path, cflags: str = "-O2 -Wall -Wextra -Werror -std=c11") -> Path:
    """examples/c built with its Makefile in `work` against the kernel in `kernel_dir`: the binary."""
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.skip("make / cc not installed")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "main.c", work)
    shutil.copy(EXAMPLE / "Makefile", work)
    r = subprocess.run(["make", "-C", str(work), f"KERNEL_DIR={kernel_dir}", f"CUDA_HOME={cuda_home()}",
                        f"CFLAGS={cflags}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return work / "decode"


@pytest.fixture(scope="module")
def artifacts() -> Artifacts:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml")
    return build(render(make_plan(m, d)), ["sm_90a"], library=True)


@pytest.fixture(scope="module")
def decode_bin(artifacts: Artifacts, tmp_path_factory) -> Path:
    return build_c_example(artifacts.directory, tmp_path_factory.mktemp("c"))


def test_c_example_compiles_and_links(decode_bin: Path, artifacts: Artifacts) -> None:
    assert decode_bin.exists()
    if shutil.which("nm"):
        und = subprocess.run(["nm", "-u", str(decode_bin)], capture_output=True, text=True, check=True).stdout
        for sym in ("adamk_create", "adamk_decode_async", "adamk_synchronize", "adamk_destroy", "adamk_last_error"):
            assert sym in und  # resolved from the library at run time
    if shutil.which("ldd"):
        out = subprocess.run(["ldd", str(decode_bin)], capture_output=True, text=True).stdout
        assert artifacts.library.name in out and "not found" not in out, out


def test_c_example_runs_to_the_device_check(decode_bin: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(decode_bin)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "ada_mk" in r.stderr
    small = tmp_path / "w.bin"
    small.write_bytes(b"\0" * 64)
    r = subprocess.run([str(decode_bin), str(small), "4", "1", "2"], capture_output=True, text=True)
    assert r.returncode == 1 and "64 bytes; this kernel" in r.stderr


def test_c_example_with_gcc_directly(artifacts: Artifacts, tmp_path: Path) -> None:
    """The same build spelled out, as the Makefile's comment describes it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    name = artifacts.library.name[3:-3]
    out = tmp_path / "decode"
    cuda = cuda_home()
    r = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", f"-I{cuda / 'include'}", "-include", str(artifacts.header),
                        "-o", str(out), str(EXAMPLE / "main.c"), f"-L{artifacts.directory}", f"-l{name}",
                        f"-Wl,-rpath,{artifacts.directory}", f"-L{cuda / 'lib64'}", "-lcudart_static", "-lpthread",
                        "-ldl", "-lrt"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_ctypes_example_parses() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "ctypes_decode.py"), "--help"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "--library" in r.stdout, r.stderr


def test_ctypes_example_reaches_create(artifacts: Artifacts, tmp_path: Path) -> None:
    """With packed weights of the right size, the example gets as far as adamk_create, which
    (without a GPU) refuses with a one-line message naming the device."""
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU: tests/gpu/test_examples_gpu.py runs the example")
    from ada_mk.runtime.capi import SharedLibrary

    packed = tmp_path / "w.bin"
    packed.write_bytes(b"\0" * SharedLibrary(artifacts.library).weights_bytes)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "ctypes_decode.py"), "--library",
                        str(artifacts.library), "--packed", str(packed), "--ids", "1", "2", "-n", "3"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and err[-1].startswith("error: ") and "device" in err[-1].lower(), r.stderr


def test_pack_matches_pack_weights(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from tests.gguf_util import write_gguf
    from tests.test_checkpoints_gguf import TINY, random_weights

    import dataclasses

    model = dataclasses.replace(TINY, hidden_size=256, head_dim=64, intermediate_size=512)  # the kernel's smallest heads
    w = random_weights(model)
    g = write_gguf(tmp_path / "tiny.gguf", model, w, {})
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml", max_context=64)
    plan = make_plan(model, d)
    doc = {"plan": plan.to_json(), "layout": make_layout(plan).to_json()}
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    assert pack_main(["--weights", str(g), "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "a.bin")]) == 0
    assert pack_main(["--weights", str(g), "--gpu", "H100", "--max-context", "64", "-o", str(tmp_path / "b.bin")]) == 0
    want = pack_weights(make_layout(plan), w).tobytes()
    assert (tmp_path / "a.bin").read_bytes() == want
    assert (tmp_path / "b.bin").read_bytes() == want
    lay = weights_layout_from_json(doc)
    assert lay.weights.total_bytes == len(want)


def test_pack_refuses_another_models_kernel(artifacts: Artifacts, tmp_path: Path, capsys) -> None:
    pytest.importorskip("gguf")
    from tests.gguf_util import write_gguf
    from tests.test_checkpoints_gguf import TINY, random_weights

    g = write_gguf(tmp_path / "tiny.gguf", TINY, random_weights(TINY), {})
    rc = pack_main(["--weights", str(g), "--library", str(artifacts.library), "-o", str(tmp_path / "x.bin")])
    err = capsys.readouterr().err
    assert rc == 2 and "hidden_size = 576" in err and len(err.strip().splitlines()) == 1


def test_pack_real_smollm2_for_the_library(artifacts: Artifacts, decode_bin: Path, tmp_path: Path) -> None:
    """The real weights packed for the library's layout: exactly ADAMK_WEIGHTS_BYTES, and the C
    program gets as far as adamk_create (which, without a GPU, says so)."""
    pytest.importorskip("gguf")
    from tests.smollm2_cases import smollm2_path

    out = tmp_path / "weights.bin"
    assert pack_main(["--weights", str(smollm2_path()), "--library", str(artifacts.library), "-o", str(out)]) == 0
    from ada_mk.runtime.capi import SharedLibrary

    assert out.stat().st_size == SharedLibrary(artifacts.library).weights_bytes
    head = np.fromfile(out, dtype="<u2", count=8)
    assert head.any()
    r = subprocess.run([str(decode_bin), str(out), "4", "504", "3575"], capture_output=True, text=True)
    assert r.returncode == 1 and "adamk_create:" in r.stderr, r.stderr
