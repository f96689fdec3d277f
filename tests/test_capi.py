"""The C ABI shared library, on a machine without a GPU: it builds, loads, describes its plan, and
refuses bad arguments and a missing device with an error code and a message (never a crash)."""
from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import Source, c_string_pieces, render
from ada_mk.config import load_config
from ada_mk.runtime.capi import ADAMK_ERR_ARGUMENT, ADAMK_ERR_MEMORY, ADAMK_ERR_WEIGHTS, ADAMK_OK, SharedLibrary
from ada_mk.runtime.weights_check import weight_segments
from ada_mk.search.layout import make_layout
from ada_mk.search.plan import Plan
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plan() -> Plan:
    m, d = load_config(str(ROOT / "configs" / "smollm2-135m.yaml"))
    return make_plan(m, d)


@pytest.fixture(scope="module")
def source(plan: Plan) -> Source:
    return render(plan)


@pytest.fixture(scope="module")
def artifacts(source: Source) -> Artifacts:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    return build(source, archs=["sm_90a"], library=True)


@pytest.fixture(scope="module")
def lib(artifacts: Artifacts) -> SharedLibrary:
    return SharedLibrary(artifacts.library)


def test_render_adds_host_code_and_header(plan: Plan, source: Source) -> None:
    stem = plan.file_stem
    assert {f"{stem}_host.cu", f"{stem}.h"} <= set(source.files)
    host, header = source.files[f"{stem}_host.cu"], source.files[f"{stem}.h"]
    assert f'#include "{stem}.cu"' in host and f'#include "{stem}.h"' in host
    assert f'#define ADAMK_KERNEL_NAME "{plan.kernel_name}"' in header
    assert f"#define ADAMK_WEIGHTS_BYTES ((size_t){make_layout(plan).weights.total_bytes}u)" in header
    assert plan.plan_hash in header and plan.deploy.gpu.name in header and plan.model.name in header


def test_c_string_pieces_round_trip() -> None:
    text = 'a"b\\c?d\n' * 5000
    pieces = c_string_pieces(text, limit=100)
    assert all(len(p) < 100 for p in pieces)
    assert all(" " <= ch <= "~" for p in pieces for ch in p)
    # Undo the escapes, as the C compiler does, piece by piece (no escape spans two pieces).
    unescape = re.compile(r'\\([\\"?]|[0-7]{3})')
    decoded = "".join(unescape.sub(lambda m: m[1] if len(m[1]) == 1 else chr(int(m[1], 8)), p) for p in pieces)
    assert decoded == text


def test_header_next_to_library(artifacts: Artifacts, plan: Plan) -> None:
    assert artifacts.library is not None and artifacts.library.exists()
    assert artifacts.header is not None and artifacts.header.exists()
    assert artifacts.header.parent == artifacts.library.parent
    assert artifacts.header.name == f"{plan.file_stem}.h"


def test_exports_only_adamk_symbols(artifacts: Artifacts) -> None:
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", str(artifacts.library)], capture_output=True,
                         text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {"adamk_create", "adamk_decode", "adamk_decode_async", "adamk_synchronize", "adamk_kv_cache",
            "adamk_set_wait_limit", "adamk_reset", "adamk_destroy", "adamk_plan_json", "adamk_check_weights"} <= names
    assert all(n.startswith("adamk_") for n in names), sorted(n for n in names if not n.startswith("adamk_"))


def test_describes_its_plan(lib: SharedLibrary, plan: Plan) -> None:
    layout = make_layout(plan)
    assert lib.version == f"ada_mk {__import__('ada_mk').__version__} {plan.kernel_name}"
    assert lib.batch == plan.batch == 1
    assert lib.vocab_size == plan.model.vocab_size
    assert lib.max_context == plan.deploy.max_context
    assert lib.weights_bytes == layout.weights.total_bytes
    got = lib.plan_json()
    assert got["plan"] == json.loads(json.dumps(plan.to_json()))  # tuples -> lists, as JSON has it
    assert got["layout"] == json.loads(json.dumps(layout.to_json()))


def test_create_rejects_wrong_size(lib: SharedLibrary) -> None:
    buf = np.zeros(8, np.uint16)
    session = ctypes.c_void_p(1)
    rc = lib.lib.adamk_create(buf.ctypes.data, buf.nbytes, 0, 0, ctypes.byref(session))
    assert rc == ADAMK_ERR_ARGUMENT
    assert session.value is None  # *out cleared
    assert str(lib.weights_bytes) in lib.last_error() and "16" in lib.last_error()
    with pytest.raises(RuntimeError, match=str(lib.weights_bytes)):
        lib.create(buf)
    with pytest.raises(TypeError):
        lib.create(np.zeros(lib.weights_bytes // 4, np.float32))


def test_create_without_gpu_fails_cleanly(lib: SharedLibrary) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    weights = np.zeros(lib.weights_bytes // 2, np.uint16)
    session = ctypes.c_void_p()
    rc = lib.lib.adamk_create(weights.ctypes.data, weights.nbytes, 0, 0, ctypes.byref(session))
    assert rc != ADAMK_OK and session.value is None
    assert "device" in lib.last_error().lower()
    with pytest.raises(RuntimeError, match="(?i)device"):
        lib.create(weights)
    assert not lib.is_open


def test_null_arguments(lib: SharedLibrary) -> None:
    assert lib.lib.adamk_create(None, lib.weights_bytes, 0, 0, None) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_decode(None, None, None, None, None) == ADAMK_ERR_ARGUMENT
    assert "NULL" in lib.last_error()
    assert lib.lib.adamk_reset(None) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_set_wait_limit(None, 100.0) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_decode_async(None, None, None, None, None, None, None) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_synchronize(None, None) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_kv_cache(None, None, None) == ADAMK_ERR_ARGUMENT
    assert lib.lib.adamk_check_weights(None) == ADAMK_ERR_ARGUMENT
    assert "NULL" in lib.last_error()
    lib.lib.adamk_destroy(None)  # a no-op
    with pytest.raises(RuntimeError, match="create"):
        lib.set_wait_limit(100.0)
    with pytest.raises(RuntimeError, match="create"):
        lib.decode([0], [0])


def test_pointers_that_are_no_session(lib: SharedLibrary) -> None:
    """A pointer adamk_create did not hand out (garbage, freed, another library's) is refused by
    every call before it is read, and destroying it (twice) does nothing: the library looks
    sessions up in its registry of live ones."""
    junk = np.full(64, 0x5A, np.uint8)  # readable memory that is no session
    for p in (junk.ctypes.data, 0x10, 2**63 - 8):
        for rc in (lib.lib.adamk_decode(p, None, None, None, None), lib.lib.adamk_reset(p),
                   lib.lib.adamk_decode_async(p, None, None, None, None, None, None), lib.lib.adamk_synchronize(p, None),
                   lib.lib.adamk_set_wait_limit(p, 10.0), lib.lib.adamk_check_weights(p)):
            assert rc == ADAMK_ERR_ARGUMENT
            assert "not a live session of this library" in lib.last_error()
        lib.lib.adamk_destroy(p)
        lib.lib.adamk_destroy(p)
        assert "not a live session" in lib.last_error() and "ignored" in lib.last_error()
    assert (junk == 0x5A).all()


def test_host_code_carries_the_segment_table(plan: Plan, source: Source) -> None:
    """adamk_check_weights scans exactly the segments weights_check.weight_segments lists."""
    host = source.files[f"{plan.file_stem}_host.cu"]
    rows = re.findall(r'^    \{"(\w+)", "([^"]*)", (\d+)ull, (\d+)ull, (true|false),', host, re.M)
    want = [(g.name, g.tensors, str(g.offset), str(g.bytes), "true" if g.per_layer else "false")
            for g in weight_segments(make_layout(plan))]
    assert rows == want and len(rows) >= 7


def test_status_codes_match_the_header(artifacts: Artifacts) -> None:
    header = artifacts.header.read_text()
    assert f"ADAMK_ERR_MEMORY = {ADAMK_ERR_MEMORY}," in header and f"ADAMK_ERR_WEIGHTS = {ADAMK_ERR_WEIGHTS}" in header


@pytest.mark.parametrize("compiler,flags", [("gcc", ["-std=c99", "-pedantic"]), ("g++", ["-std=c++17"])])
def test_header_compiles(artifacts: Artifacts, plan: Plan, tmp_path: Path, compiler: str,
                         flags: list[str]) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    assert artifacts.header is not None
    src = tmp_path / ("use.c" if compiler == "gcc" else "use.cpp")
    src.write_text(f"""#include "{artifacts.header.name}"
#include <stdio.h>

/* Every call of the ABI, with the header's types and constants. */
int run(const void* weights) {{
  adamk_session* s = NULL;
  int32_t tokens[ADAMK_BATCH] = {{0}}, positions[ADAMK_BATCH] = {{0}}, next[ADAMK_BATCH];
  static float logits[ADAMK_BATCH * ADAMK_VOCAB_SIZE];
  size_t bytes = adamk_weights_bytes();
  int rc = adamk_create(weights, ADAMK_WEIGHTS_BYTES, 0, 0, &s);
  if (rc != ADAMK_OK) {{
    printf("%s %s %s: %s\\n", adamk_version(), ADAMK_KERNEL_NAME, ADAMK_PLAN_HASH, adamk_last_error());
    return rc;
  }}
  rc = adamk_check_weights(s);
  if (rc == ADAMK_ERR_WEIGHTS || rc == ADAMK_ERR_MEMORY) return rc;
  rc = adamk_decode(s, tokens, positions, next, logits);
  if (rc == ADAMK_ERR_TIMEOUT || rc == ADAMK_ERR_CUDA || rc == ADAMK_ERR_DEVICE || rc == ADAMK_ERR_ARGUMENT)
    rc = adamk_reset(s);
  adamk_destroy(s);
  return rc + (int)(bytes - ADAMK_WEIGHTS_BYTES) + adamk_batch() + adamk_vocab_size() + adamk_max_context()
         + (adamk_plan_json()[0] == '{{');
}}
""")
    subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", "-I", str(artifacts.header.parent),
                    "-c", str(src), "-o", str(tmp_path / "use.o")], check=True)
    # And the object links against the library.
    if compiler == "gcc":
        main = tmp_path / "main.c"
        main.write_text("int run(const void*);\nint main(void) { return run(0) == 12345; }\n")
        subprocess.run([compiler, str(main), str(tmp_path / "use.o"), str(artifacts.library),
                        "-o", str(tmp_path / "use")], check=True)
