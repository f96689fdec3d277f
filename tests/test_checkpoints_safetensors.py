"""HF checkpoint folders: tiny models that the tests save themselves (float32 and bf16, one file
and sharded), read back through our own safetensors parser, checked against HF's logits; and the
errors for missing, extra and mis-shaped tensors."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import CheckpointError, load_checkpoint, load_safetensors_dir
from ada_mk.checkpoints.names import expected_weights
from ada_mk.checkpoints.safetensors_dir import read_header
from ada_mk.config import ModelConfig
from ada_mk.ir.build import build_decode_graph
from ada_mk.ir.reference import ReferenceExecutor
from tests.hf_util import hf_logits, random_hf_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = ModelConfig(name="tiny", model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=96, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
TOKENS = [3, 17, 42, 5, 88, 1, 60, 33]


def _save(hf, folder: Path, dtype, shard: str | None) -> Path:
    """Save a copy of `hf` in `dtype`, leaving `hf` alone (casting a model also casts its RoPE
    buffers, which would spoil it as a float32 oracle)."""
    kw = {"max_shard_size": shard} if shard else {}
    copy.deepcopy(hf).to(dtype).save_pretrained(folder, safe_serialization=True, **kw)
    return folder


def _round_params(hf, dtype):
    """`hf` with its parameters rounded to `dtype` and kept in float32: the stored model."""
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(dtype).float())
    return hf


@pytest.mark.parametrize("model,dtype,shard", [
    (TINY, "float32", None),
    (TINY, "bfloat16", "40KB"),
    (dataclasses.replace(TINY, tie_word_embeddings=True), "float32", "40KB"),
    (dataclasses.replace(TINY, model_type="qwen2", attention_bias=True), "bfloat16", None),
    (dataclasses.replace(TINY, model_type="qwen3", qk_norm=True, head_dim=32), "bfloat16", "40KB"),
    (dataclasses.replace(TINY, model_type="gemma3_text", qk_norm=True, norm_offset=1.0, sandwich_norm=True,
                         embed_scale=True, hidden_act="gelu_tanh", query_pre_attn_scalar=16.0, sliding_window=4,
                         layer_types=("sliding_attention", "full_attention"), rope_local_theta=10000.0,
                         rope_theta=1e6, rms_norm_eps=1e-6), "float32", None),
])
def test_round_trip_matches_hf_logits(tmp_path: Path, model: ModelConfig, dtype: str, shard: str | None) -> None:
    hf = random_hf_model(model, seed=1)
    tdtype = getattr(torch, dtype)
    folder = _save(hf, tmp_path / "ckpt", tdtype, shard)
    if shard:
        assert (folder / "model.safetensors.index.json").exists()
        assert len(list(folder.glob("*.safetensors"))) > 1
    m, weights = load_safetensors_dir(folder)
    assert dataclasses.replace(m, name=model.name) == model
    assert set(weights) == set(expected_weights(model))
    # HF's own model at the stored precision is the oracle (bf16 weights widened to float32).
    oracle = _round_params(hf, tdtype)
    if model.embed_scale:  # Gemma: the IR scales by sqrt(hidden) in bf16, as HF does in bf16
        from ada_mk.ir.build import embed_scale

        oracle.model.embed_tokens.embed_scale.fill_(embed_scale(model))
    sd = oracle.state_dict()
    for name in weights:
        np.testing.assert_array_equal(weights[name], sd[name].numpy(), err_msg=name)
    ref = ReferenceExecutor(m, weights, batch=1, max_context=16)
    ours = np.stack([ref.step(np.array([t]), np.array([i]))[0] for i, t in enumerate(TOKENS)])
    np.testing.assert_allclose(ours, hf_logits(oracle, TOKENS), rtol=2e-4, atol=2e-4)


def test_load_checkpoint_dispatches_to_folder(tmp_path: Path) -> None:
    folder = _save(random_hf_model(TINY, seed=2), tmp_path / "ckpt", torch.float32, None)
    ck = load_checkpoint(folder)
    assert ck.kind == "safetensors" and ck.tokenizer_source is None
    assert load_checkpoint(folder / "model.safetensors").path == folder  # a file in the folder
    with pytest.raises(CheckpointError, match="no tokenizer"):
        ck.tokenizer()


def test_explicit_model_overrides_config(tmp_path: Path) -> None:
    folder = _save(random_hf_model(TINY, seed=2), tmp_path / "ckpt", torch.float32, None)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_safetensors_dir(folder)
    m, w = load_safetensors_dir(folder, TINY)
    assert m == TINY and len(w) == len(expected_weights(TINY))


# ----------------------------------------------------------------------------- errors
def _write_st(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def _tiny_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = _save(random_hf_model(TINY, seed=3), tmp_path / "ckpt", torch.float32, None)
    _, w = load_safetensors_dir(folder)
    return folder, {k: np.ascontiguousarray(w[k]) for k in w}


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    folder, w = _tiny_folder(tmp_path)
    del w["model.layers.1.mlp.up_proj.weight"]
    _write_st(folder / "model.safetensors", w)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_safetensors_dir(folder)


def test_extra_tensor_is_named(tmp_path: Path) -> None:
    folder, w = _tiny_folder(tmp_path)
    w["model.layers.2.mlp.up_proj.weight"] = w["model.layers.1.mlp.up_proj.weight"]
    _write_st(folder / "model.safetensors", w)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"):
        load_safetensors_dir(folder)


def test_rotary_inv_freq_is_ignored(tmp_path: Path) -> None:
    folder, w = _tiny_folder(tmp_path)
    w["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    _write_st(folder / "model.safetensors", w)
    _, loaded = load_safetensors_dir(folder)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in loaded


def test_misshaped_tensor_is_named(tmp_path: Path) -> None:
    folder, w = _tiny_folder(tmp_path)
    w["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    _write_st(folder / "model.safetensors", w)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(16, 64\); "
                                              r"expected \(32, 64\)"):
        load_safetensors_dir(folder)


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    """A checkpoint saved by transformers, its file cut short: one line naming the file and a
    tensor whose bytes the cut loses (offsets read with safetensors' own header format: an 8-byte
    length, then JSON)."""
    folder = _save(random_hf_model(TINY, seed=9), tmp_path / "ckpt", torch.float32, None)
    f = folder / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = {k: v for k, v in json.loads(data[8:8 + n]).items() if k != "__metadata__"}
    cut = len(data) - (len(data) - 8 - n) // 3
    f.write_bytes(data[:cut])
    lost = {k for k, v in header.items() if 8 + n + v["data_offsets"][1] > cut}
    with pytest.raises(CheckpointError) as e:
        load_safetensors_dir(folder)
    msg = str(e.value)
    named = re.search(r"tensor '([^']+)'", msg)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{f}: ") and named and named[1] in lost, msg


def test_unsupported_dtype_and_broken_files(tmp_path: Path) -> None:
    folder, w = _tiny_folder(tmp_path)
    w["model.norm.weight"] = w["model.norm.weight"].astype(np.int32)
    _write_st(folder / "model.safetensors", w)
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' has dtype I32"):
        load_safetensors_dir(folder)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        read_header(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CheckpointError, match="bad JSON header"):
        read_header(folder / "model.safetensors")
    head = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bytes(16))
    with pytest.raises(CheckpointError, match="'x' has data offsets"):
        read_header(folder / "model.safetensors")


def test_sharded_index_errors(tmp_path: Path) -> None:
    folder = _save(random_hf_model(TINY, seed=4), tmp_path / "ckpt", torch.float32, "40KB")
    shard = sorted(folder.glob("*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shard.name}' is missing"):
        load_safetensors_dir(folder)
    (folder / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="malformed index"):
        load_safetensors_dir(folder)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "x.bin").write_bytes(b"abcdefgh")
    with pytest.raises(CheckpointError, match="neither a GGUF file nor an HF checkpoint folder"):
        load_checkpoint(tmp_path / "x.bin")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError):
        load_safetensors_dir(tmp_path / "empty", TINY)


def test_expected_weights_are_the_graphs() -> None:
    g = build_decode_graph(TINY, None, context=1, batch=1, max_context=1)
    assert expected_weights(TINY) == {t.name: tuple(t.shape) for t in g.weights()}
