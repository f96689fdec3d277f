"""adamk-pack with an 8-bit plan: the quantized packed buffer is written once and a later load
reads the same bytes; a GGUF Q8_0 checkpoint's codes and scales are packed as stored."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints.load import load_checkpoint
from ada_mk.checkpoints.pack import read_packed, weights_layout_from_json
from ada_mk.cli.pack import main as pack_main
from ada_mk.config import DeployConfig, deploy_for
from ada_mk.runtime.weights import pack_weights
from ada_mk.runtime.weights_q8 import unpack_quantized
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

pytest.importorskip("gguf")

from tests.gguf_util import write_gguf  # noqa: E402
from tests.test_checkpoints_gguf import TINY, random_weights  # noqa: E402

MODEL = dataclasses.replace(TINY, hidden_size=256, head_dim=64, intermediate_size=512)  # the kernel's smallest heads
CUTS = {"qkv": (8, 2, 1), "o": (12, 1, 2), "gate_up": (16, 1, 4), "down": (8, 2, 1), "lm_head": (16, 1, 1)}


def int8_plan():
    """A batch-1 plan of MODEL with every linear stage int8, group 32 (Q8_0's)."""
    plan = make_plan(MODEL, deploy_for(MODEL, "H100", 1, 64))
    tilings = {}
    for kind, t in plan.tilings.items():
        rows, ks, wpr = CUTS[kind]
        tilings[kind] = dataclasses.replace(t, rows=rows, ksplit=ks, warps_per_row=wpr, tiled=True, weights="int8",
                                            group=32)
        assert tilings[kind].whole_column_blocks
    return dataclasses.replace(plan, tilings=tilings)


def run(args: list[str]) -> int:
    return pack_main.main(args, standalone_mode=False)


@pytest.mark.parametrize("linears", ["F32", "Q8_0"])
def test_pack_writes_the_quantized_buffer_and_a_load_reads_it(tmp_path: Path, linears: str) -> None:
    """F32 linears are quantized by adamk-pack; Q8_0 linears are packed as stored (their codes
    and scales, group 32). The file is pack_weights' buffer and read_packed gives it back."""
    seed = int(np.random.default_rng().integers(1 << 30))
    w = random_weights(MODEL, seed)
    g = write_gguf(tmp_path / "tiny.gguf", MODEL, w, {"proj.weight": linears})
    plan = int8_plan()
    lay = make_layout(plan)
    doc = {"plan": plan.to_json(), "layout": lay.to_json()}
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    out = tmp_path / "w.bin"
    assert run(["--weights", str(g), "--plan", str(tmp_path / "plan.json"), "-o", str(out)]) == 0
    lay_json = weights_layout_from_json(json.loads((tmp_path / "plan.json").read_text()))
    got = read_packed(out, lay_json)
    assert got.dtype == np.uint16 and got.nbytes == lay.weights.total_bytes
    ck = load_checkpoint(g)
    assert (got == pack_weights(lay, ck.weights)).all()  # Q8_0 re-quantized at group 32 is itself
    assert (run(["--weights", str(g), "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "again.bin")]) == 0
            and (tmp_path / "again.bin").read_bytes() == out.read_bytes())
    seg = lay.weights.per_layer["wdown"]
    base = lay.weights.layer_base + lay.weights.layer_stride
    m = unpack_quantized(got, seg, base)
    name = "model.layers.1.mlp.down_proj.weight"
    if linears == "Q8_0":  # as stored: the checkpoint's own codes and fp16 scales
        from ada_mk.checkpoints.pack import PackingSources
        from ada_mk.quant import QuantizedMatrix

        assert isinstance(PackingSources(ck.weights, ck.quantized, lay)[name], QuantizedMatrix)
        q = ck.quantized[name]
        assert q.group == 32 and (m.q == q.q).all() and (m.scales == q.scales).all()
    else:
        assert len(ck.quantized) == 0
    assert np.allclose(m.dequantize(), ck.weights[name], atol=np.abs(ck.weights[name]).max() / 100)


def test_pack_refuses_a_wrong_size_or_format(tmp_path: Path, capsys) -> None:
    w = random_weights(MODEL, 0)
    g = write_gguf(tmp_path / "tiny.gguf", MODEL, w, {})
    plan = int8_plan()
    lay = make_layout(plan)
    (tmp_path / "plan.json").write_text(json.dumps({"plan": plan.to_json(), "layout": lay.to_json()}))
    rc = run(["--weights", str(g), "--plan", str(tmp_path / "plan.json"), "--weights-format", "fp8",
              "-o", str(tmp_path / "x.bin")])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights-format" in err and "int8" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "short.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="short.bin: 64 bytes"):
        read_packed(tmp_path / "short.bin", lay)


def test_pack_weights_format_flag_plans_here(tmp_path: Path, capsys) -> None:
    """--weights-format without --plan: an 8-bit plan made here where the deployment has the
    field (deploy.weights), else a one-line error naming the flag."""
    g = write_gguf(tmp_path / "tiny.gguf", MODEL, random_weights(MODEL, 1), {})
    rc = run(["--weights", str(g), "--gpu", "H100", "--max-context", "64", "--weights-format", "fp8",
              "-o", str(tmp_path / "x.bin")])
    err = capsys.readouterr().err
    if "weights" in {f.name for f in dataclasses.fields(DeployConfig)}:
        assert rc == 0, err
    else:
        assert rc == 2 and "--weights-format" in err and len(err.strip().splitlines()) == 1
