"""The kernels checked in under out/ are exactly what the generator writes today.

They are there for code review: a change to the templates, the planner or the IR shows up as a
diff of generated CUDA. Render only (no nvcc), a few seconds in all.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from ada_mk.codegen import regen

ROOT = Path(__file__).resolve().parents[1]


def _first_diff(a: Path, b: Path) -> str:
    old, new = a.read_text().splitlines(), b.read_text().splitlines()
    for line in difflib.unified_diff(old, new, str(a.relative_to(ROOT)), "regenerated", n=0, lineterm=""):
        if line.startswith(("-", "+")) and not line.startswith(("---", "+++")):
            return f"first change: {line[:160]}"
    return ""


@pytest.mark.parametrize("config, gpu, batch, weights", regen.KERNELS,
                         ids=[f"{c}-{g}-bs{b}-{w}" for c, g, b, w in regen.KERNELS])
def test_checked_in_kernel_is_current(tmp_path, config, gpu, batch, weights):
    fresh = regen.generate(config, gpu, batch, weights, tmp_path, ROOT)
    rel = fresh.relative_to(tmp_path)
    checked_in = ROOT / "out" / rel
    diff = regen.differences(checked_in, fresh)
    if diff:
        detail = [f"{d}" + (f" ({_first_diff(checked_in / d.split()[0], fresh / d.split()[0])})"
                            if d.endswith(" differs") else "") for d in diff]
        pytest.fail(f"out/{rel.as_posix()} is stale: run `{regen.COMMAND}`\n  " + "\n  ".join(detail),
                    pytrace=False)


def test_checked_in_kernels_are_complete():
    """Every kernel directory has the plan, the IR and all four sources of one kernel."""
    for config, gpu, batch, weights in regen.KERNELS:
        d = regen.kernel_dir(ROOT / "out", config, gpu, batch, weights, ROOT)
        names = regen.generated_files(d)
        assert "plan.json" in names and "ir.json" in names, (d, names)
        cu = [n for n in names if n.endswith(".cu") and not n.endswith("_host.cu")]
        assert len(cu) == 1, (d, names)
        stem = cu[0][: -len(".cu")]
        assert {f"{stem}.schedule.inc", f"{stem}_host.cu", f"{stem}.h"} <= set(names), (d, names)
