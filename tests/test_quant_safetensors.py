"""FP8 safetensors checkpoints written here in each published layout (compressed-tensors per
tensor, per channel, per block; block FP8 with weight_scale_inv), read back through
load_checkpoint: dequantized weights equal W = q x scale exactly (computed here with torch), the
stored QuantizedMatrix is handed out as well, and bad inputs give one-line errors. One tiny Llama
in FP8 runs through the reference executor and matches HF transformers on the dequantized weights."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ada_mk.checkpoints import CheckpointError, load_checkpoint
from ada_mk.checkpoints.names import check_weights, expected_weights
from ada_mk.config import ConfigError, ModelConfig, load_config
from ada_mk.ir.reference import ReferenceExecutor
from ada_mk.quant import encode_e4m3, quantize_fp8

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("transformers")

from tests.hf_util import hf_config_from_model, hf_logits, random_hf_model  # noqa: E402

TINY = ModelConfig(name="tiny", model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=96, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
LINEAR = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
          "down_proj.weight")
TOKENS = [3, 17, 42, 5, 88, 1, 60, 33]


def ct_config(strategy: str, block: list[int] | None = None, fmt: str = "float-quantized",
              group_size: int | None = None) -> dict[str, Any]:
    """A compressed-tensors quantization_config as llm-compressor writes it (FP8 weights)."""
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": strategy,
               "block_structure": block, "group_size": group_size, "actorder": None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "output_activations": None,
                                          "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                                "dynamic": True, "symmetric": True}}}}


def block_fp8_config(block: list[int]) -> dict[str, Any]:
    return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": block}


def random_codes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random E4M3 codes, NaN (0x7F, 0xFF) excluded, zeros and subnormals included."""
    q = rng.integers(0, 256, shape, dtype=np.uint8)
    return np.where((q & 0x7F) == 0x7F, q ^ 0x01, q).astype(np.uint8)


def scale_shape(layout: str, n: int, k: int, block: tuple[int, int] | None) -> tuple[int, ...]:
    if layout == "tensor":
        return (1,)
    if layout == "channel":
        return (n, 1)
    return (math.ceil(n / block[0]), math.ceil(k / block[1]))


def torch_dequant(q: Any, s: Any, block: tuple[int, int] | None) -> np.ndarray:
    """W = q x scale with torch, block scales expanded over their rows and columns."""
    w = q.float()
    s = s.float()
    if block is not None:
        s = s.repeat_interleave(block[0], 0)[: w.shape[0]].repeat_interleave(block[1], 1)[:, : w.shape[1]]
    return (w * s).numpy()


def write_checkpoint(folder: Path, model: ModelConfig, dense: dict[str, np.ndarray], qc: dict[str, Any] | None,
                     quant: dict[str, tuple[np.ndarray, np.ndarray, str]], extra: dict[str, Any] | None = None,
                     drop_config: bool = False) -> Path:
    """config.json (+ quantization_config) and model.safetensors: `dense` float32 tensors as they
    are, `quant` name -> (E4M3 codes, scale tensor, scale tensor suffix), `extra` tensors as given."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config_from_model(model).to_dict()
    if qc is not None:
        cfg["quantization_config"] = qc
    if not drop_config:
        (folder / "config.json").write_text(json.dumps(cfg))
    tensors: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dense.items()}
    for name, (q, s, suffix) in quant.items():
        tensors[name] = torch.from_numpy(q).view(torch.float8_e4m3fn)
        tensors[name[: -len("weight")] + suffix] = s
    tensors.update(extra or {})
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def random_fp8_checkpoint(folder: Path, layout: str, block: tuple[int, int] | None, scale_dtype: Any,
                          suffix: str, qc: dict[str, Any], seed: int = 0):
    """A TINY checkpoint whose linear weights are random E4M3 codes with random positive scales."""
    rng = np.random.default_rng(seed)
    dense, quant, want = {}, {}, {}
    for name, shape in expected_weights(TINY).items():
        if name.endswith(LINEAR):
            n, k = shape
            q = random_codes(rng, shape)
            s = torch.from_numpy(rng.uniform(0.001, 0.1, scale_shape(layout, n, k, block)).astype(np.float32))
            s = s.to(scale_dtype)
            quant[name] = (q, s, suffix)
            want[name] = torch_dequant(torch.from_numpy(q).view(torch.float8_e4m3fn), s, block)
        else:
            dense[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            want[name] = dense[name]
    write_checkpoint(folder, TINY, dense, qc, quant)
    return want


LAYOUTS = {
    "ct-tensor-f32": ("tensor", None, torch.float32, "weight_scale", ct_config("tensor")),
    "ct-channel-bf16": ("channel", None, torch.bfloat16, "weight_scale", ct_config("channel")),
    "ct-naive-tensor-bf16": ("tensor", None, torch.bfloat16, "weight_scale", ct_config("tensor", fmt="naive-quantized")),
    "ct-block128-bf16": ("block", (128, 128), torch.bfloat16, "weight_scale", ct_config("block", [128, 128])),
    "ct-block-partial-f32": ("block", (32, 48), torch.float32, "weight_scale", ct_config("block", [32, 48])),
    # a group of 32 columns is a 1x32 block as far as the expected values go
    "ct-group32-bf16": ("block", (1, 32), torch.bfloat16, "weight_scale", ct_config("group", group_size=32)),
    "fp8-block128": ("block", (128, 128), torch.float32, "weight_scale_inv", block_fp8_config([128, 128])),
    "fp8-block-partial": ("block", (16, 48), torch.float32, "weight_scale_inv", block_fp8_config([16, 48])),
    "fp8-per-tensor": ("tensor", None, torch.float32, "weight_scale", {"quant_method": "fp8",
                                                                       "activation_scheme": "static"}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fp8_layouts_dequantize_exactly(tmp_path: Path, layout: str) -> None:
    kind, block, sdtype, suffix, qc = LAYOUTS[layout]
    want = random_fp8_checkpoint(tmp_path / "ckpt", kind, block, sdtype, suffix, qc)
    ck = load_checkpoint(tmp_path / "ckpt")
    assert ck.model == load_config(tmp_path / "ckpt" / "config.json")[0]
    assert set(ck.weights) == set(want)
    for name, w in want.items():
        got = ck.weights[name]
        assert got.dtype == np.float32 and got.shape == w.shape
        assert np.array_equal(got, w), name
    assert set(ck.quantized) == {n for n in want if n.endswith(LINEAR)}
    for name, m in ck.quantized.items():
        assert m.fmt == "fp8" and m.shape == want[name].shape
        k = m.shape[1]
        expect_group = k if kind != "block" else math.gcd(block[1], k)
        assert m.group == expect_group
        assert np.array_equal(m.dequantize(), want[name])


def test_fp8_quantized_tiny_llama_matches_hf(tmp_path: Path) -> None:
    """quantize_fp8 (per channel) -> compressed-tensors folder -> load_checkpoint -> reference
    executor; HF transformers runs the same dequantized weights in float32."""
    hf = random_hf_model(TINY, seed=11)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    dense, quant = {}, {}
    for name, w in sd.items():
        if name.endswith(LINEAR):
            m = quantize_fp8(w)
            quant[name] = (m.q, torch.from_numpy(m.scales).to(torch.bfloat16).float(), "weight_scale")
        else:
            dense[name] = w
    write_checkpoint(tmp_path / "ckpt", TINY, dense, ct_config("channel"), quant)
    ck = load_checkpoint(tmp_path / "ckpt")
    weights = {k: ck.weights[k] for k in ck.weights}
    with torch.no_grad():  # HF on the dequantized weights
        for name, p in hf.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    assert max(float(np.abs(weights[n] - sd[n]).max() / np.abs(sd[n]).max()) for n in quant) < 0.07
    ex = ReferenceExecutor(TINY, weights, batch=1, max_context=len(TOKENS) + 1)
    ref = hf_logits(hf, TOKENS)
    for i, t in enumerate(TOKENS):
        got = ex.step(np.array([t]), np.array([i]))[0]
        assert np.linalg.norm(got - ref[i]) / np.linalg.norm(ref[i]) <= 1e-4, i


# ----------------------------------------------------------------------------- errors
def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def small_fp8(tmp_path: Path, qc: dict[str, Any] | None, edit=None, drop_config: bool = False) -> Path:
    """A per-channel FP8 TINY checkpoint, `edit(dense, quant, extra)` changing its tensors first."""
    rng = np.random.default_rng(0)
    dense, quant, extra = {}, {}, {}
    for name, shape in expected_weights(TINY).items():
        if name.endswith(LINEAR):
            quant[name] = (random_codes(rng, shape), torch.full((shape[0], 1), 0.01), "weight_scale")
        else:
            dense[name] = np.ones(shape, np.float32)
    if edit:
        edit(dense, quant, extra)
    return write_checkpoint(tmp_path / "ckpt", TINY, dense, qc, quant, extra, drop_config)


@pytest.mark.parametrize("qc,match", [
    ({"quant_method": "awq", "bits": 8, "group_size": 128}, r"bits = 8: unsupported"),  # 4-bit AWQ / GPTQ load
    ({"quant_method": "gptq", "bits": 3}, r"bits = 3"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, r"quant_method = 'bitsandbytes'"),
    (ct_config("channel", fmt="pack-quantized"), r"format = 'pack-quantized': unsupported compressed-tensors format"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, r"fmt = 'e5m2'"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, r"weight_block_size = \[128\]"),
])
def test_unsupported_quantization_config(tmp_path: Path, qc: dict[str, Any], match: str) -> None:
    folder = small_fp8(tmp_path, qc)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(folder)
    assert "config.json" in _one_line(e)
    with pytest.raises(ConfigError, match=match):  # adamk-gen --config on the same file
        load_config(folder / "config.json")
    with pytest.raises(CheckpointError, match=match):  # and with the model given explicitly
        load_checkpoint(folder, TINY)


def test_int_weights_in_compressed_tensors_are_refused(tmp_path: Path) -> None:
    qc = ct_config("channel")
    qc["config_groups"]["group_0"]["weights"]["type"] = "int"
    with pytest.raises(CheckpointError, match=r"weights = 'int 8-bit': unsupported") as e:
        load_checkpoint(small_fp8(tmp_path, qc))
    _one_line(e)


def test_e5m2_tensor_is_refused(tmp_path: Path) -> None:
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(dense, quant, extra):
        q, _, _ = quant.pop(name)
        extra[name] = torch.from_numpy(q).view(torch.float8_e5m2)
        extra[name + "_scale"] = torch.ones(1)
    with pytest.raises(CheckpointError, match=rf"'{name}' has dtype F8_E5M2: FP8 E5M2 weights are unsupported") as e:
        load_checkpoint(small_fp8(tmp_path, ct_config("channel"), edit))
    _one_line(e)


def test_int8_tensor_is_refused(tmp_path: Path) -> None:
    name = "model.layers.1.self_attn.o_proj.weight"

    def edit(dense, quant, extra):
        q, _, _ = quant.pop(name)
        extra[name] = torch.from_numpy(q.view(np.int8))
    with pytest.raises(CheckpointError, match=rf"'{name}' has dtype I8: int8 weights are unsupported"):
        load_checkpoint(small_fp8(tmp_path, ct_config("channel"), edit))


def test_scale_shape_mismatch_is_named(tmp_path: Path) -> None:
    name = "model.layers.1.mlp.down_proj.weight"

    def edit(dense, quant, extra):
        q, s, suffix = quant[name]
        quant[name] = (q, torch.ones(3, 2), suffix)
    folder = small_fp8(tmp_path, ct_config("channel"), edit)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.down_proj\.weight_scale' has shape "
                                              r"\[3, 2\], which does not fit weight .* \[64, 160\] under FP8 E4M3 "
                                              r"\(compressed-tensors\); expected \[1\] or \[64, 1\]") as e:
        load_checkpoint(folder)  # from the header, before any data is read
    _one_line(e)


def test_block_scale_shape_mismatch(tmp_path: Path) -> None:
    name = "model.layers.0.mlp.gate_proj.weight"

    def edit(dense, quant, extra):
        q, s, _ = quant[name]
        quant[name] = (q, torch.ones(1, 1), "weight_scale_inv")  # 160 rows need 2 blocks of 128
        for n in list(quant):
            if n != name:
                quant[n] = (quant[n][0], torch.ones(1, 2) if n.endswith("down_proj.weight") else torch.ones(1, 1),
                            "weight_scale_inv")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight_scale_inv' has shape "
                                              r"\[1, 1\].*expected \[1\] or \[160, 1\] or \[2, 1\] \(128x128 blocks\)"):
        load_checkpoint(small_fp8(tmp_path, block_fp8_config([128, 128]), edit))


def test_non_finite_scale_is_named(tmp_path: Path) -> None:
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(dense, quant, extra):
        q, s, suffix = quant[name]
        s = s.clone()
        s[3] = float("nan")
        quant[name] = (q, s, suffix)
    ck = load_checkpoint(small_fp8(tmp_path, ct_config("channel"), edit))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight_scale' holds NaN"):
        ck.weights[name]


def test_missing_or_stray_scales(tmp_path: Path) -> None:
    name = "model.layers.0.self_attn.q_proj.weight"

    def no_scale(dense, quant, extra):
        q, _, _ = quant.pop(name)
        extra[name] = torch.from_numpy(q).view(torch.float8_e4m3fn)
    with pytest.raises(CheckpointError, match=rf"FP8 tensor '{name}' has no scale tensor '{name}_scale'"):
        load_checkpoint(small_fp8(tmp_path / "a", ct_config("channel"), no_scale))

    def stray(dense, quant, extra):
        extra["model.norm.weight_scale"] = torch.ones(1)
    with pytest.raises(CheckpointError, match=r"unexpected scale tensor 'model\.norm\.weight_scale': its weight "
                                              r"'model\.norm\.weight' is F32, not F8_E4M3"):
        load_checkpoint(small_fp8(tmp_path / "b", ct_config("channel"), stray))

    def wrong_suffix(dense, quant, extra):
        q, s, _ = quant[name]
        quant[name] = (q, s, "weight_scale_inv")
    with pytest.raises(CheckpointError, match=rf"has no scale tensor '{name}_scale'"):
        load_checkpoint(small_fp8(tmp_path / "c", ct_config("channel"), wrong_suffix))


def test_fp8_without_quantization_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is F8_E4M3 but .*config\.json has no quantization_config"):
        load_checkpoint(small_fp8(tmp_path / "a", None))
    with pytest.raises(CheckpointError, match=r"is F8_E4M3 but .*config\.json has no quantization_config"):
        load_checkpoint(small_fp8(tmp_path / "b", None, drop_config=True), TINY)


def test_activation_and_kv_scales_are_ignored(tmp_path: Path) -> None:
    def edit(dense, quant, extra):
        for n in quant:
            extra[n[: -len("weight")] + "input_scale"] = torch.ones(1)
        extra["model.layers.0.self_attn.k_scale"] = torch.ones(())
        extra["model.layers.0.self_attn.v_scale"] = torch.ones(())
    ck = load_checkpoint(small_fp8(tmp_path, ct_config("channel"), edit))
    assert set(ck.weights) == set(expected_weights(TINY))
    assert not any("scale" in n for n in ck.weights)


def test_check_weights_accepts_scale_names() -> None:
    shapes = dict(expected_weights(TINY))
    shapes["model.layers.0.mlp.up_proj.weight_scale"] = (160, 1)
    shapes["model.layers.0.mlp.up_proj.weight_scale_inv"] = (2, 1)
    shapes["model.layers.0.mlp.up_proj.input_scale"] = (1,)
    drop = check_weights(TINY, shapes, "x")
    assert sorted(drop) == sorted(n for n in shapes if "scale" in n)


def test_bf16_checkpoint_has_no_quantized_weights(tmp_path: Path) -> None:
    hf = random_hf_model(TINY, seed=2)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    ck = load_checkpoint(tmp_path / "ckpt")
    assert len(ck.quantized) == 0 and len(ck.weights) == len(expected_weights(TINY))


def test_adamk_pack_packs_the_dequantized_fp8_weights(tmp_path: Path) -> None:
    """adamk-pack on a block-FP8 folder writes the bf16 buffer of W = q x scale."""
    import dataclasses

    from ada_mk.cli.pack import main as pack_cli
    from ada_mk.config import deploy_for
    from ada_mk.runtime.weights import pack_weights
    from ada_mk.search.layout import make_layout
    from ada_mk.search.planner import make_plan

    model = dataclasses.replace(TINY, hidden_size=256, head_dim=64, intermediate_size=384)  # the kernel's heads
    rng = np.random.default_rng(6)
    dense, quant, want = {}, {}, {}
    for name, shape in expected_weights(model).items():
        w = (rng.standard_normal(shape) * 0.05 + (1.0 if name.endswith("norm.weight") else 0.0)).astype(np.float32)
        if name.endswith(LINEAR):  # block FP8 as DeepSeek writes it: scale = block amax / 448
            n, k = shape
            blocks = np.abs(w).reshape(n // 128, 128, k // 128, 128).max(axis=(1, 3)) / np.float32(448)
            q = encode_e4m3(w / np.repeat(np.repeat(blocks, 128, 0), 128, 1))
            quant[name] = (q, torch.from_numpy(blocks), "weight_scale_inv")
            want[name] = torch_dequant(torch.from_numpy(q).view(torch.float8_e4m3fn), torch.from_numpy(blocks),
                                       (128, 128))
        else:
            dense[name] = want[name] = w
    folder = write_checkpoint(tmp_path / "ckpt", model, dense, block_fp8_config([128, 128]), quant)
    out = tmp_path / "w.bin"
    assert pack_cli.main(["--weights", str(folder), "--gpu", "H100", "--max-context", "64", "-o", str(out)],
                         standalone_mode=False) == 0
    plan = make_plan(model, deploy_for(model, "H100", None, 64))
    assert out.read_bytes() == pack_weights(make_layout(plan), want).tobytes()
