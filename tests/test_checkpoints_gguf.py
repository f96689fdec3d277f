"""GGUF files written here the way llama.cpp writes them (Q8_0/Q4_0/Q4_1/F16/BF16 tensors, Q and
K rows permuted): loaded back, un-permuted, checked against the stored values, against HF
transformers' own GGUF loader, and for clear errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import CheckpointError, load_checkpoint, load_gguf
from ada_mk.checkpoints.gguf_file import permute_qk, unpermute_qk
from ada_mk.config import ModelConfig
from ada_mk.ir.reference import ReferenceExecutor
from tests.gguf_util import CHAT_TEMPLATE, stored, write_gguf

pytest.importorskip("gguf")

TINY = ModelConfig(name="tiny-1m", model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True)
QTYPES = {"embed_tokens.weight": "Q8_0", "q_proj.weight": "Q4_0", "k_proj.weight": "Q4_1", "v_proj.weight": "Q8_0",
          "o_proj.weight": "F16", "gate_proj.weight": "Q4_1", "up_proj.weight": "BF16", "down_proj.weight": "Q4_0"}


def random_weights(model: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    from ada_mk.checkpoints.names import expected_weights

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_weights(model).items():
        base = 1.0 if name.endswith("norm.weight") else 0.0
        out[name] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return out


def test_permutation_round_trip() -> None:
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_qk(permute_qk(w, 8), 8), w)
    assert not np.array_equal(permute_qk(w, 8), w)
    # llama.cpp's layout interleaves each head's two halves: rows (0, d/2, 1, d/2+1, ...)
    p = permute_qk(np.arange(8, dtype=np.float32)[:, None], 1)[:, 0]
    assert p.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("model", [TINY, dataclasses.replace(TINY, tie_word_embeddings=False)])
def test_load_quantized_and_permuted(tmp_path: Path, model: ModelConfig) -> None:
    w = random_weights(model)
    path = write_gguf(tmp_path / "tiny.gguf", model, w, QTYPES)
    m, loaded, tok = load_gguf(path)
    assert m == model
    assert set(loaded) == set(w)
    for name, arr in w.items():
        q = next((t for s, t in QTYPES.items() if name.endswith(s)), "F32")
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            n = model.num_attention_heads if "q_proj" in name else model.num_key_value_heads
            want = unpermute_qk(stored(permute_qk(arr, n), q), n)
        else:
            want = stored(arr, q)
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)
        tol = {"F32": 0, "F16": 1e-3, "BF16": 2e-3, "Q8_0": 3e-3, "Q4_0": 0.06, "Q4_1": 0.04}[q]
        assert np.abs(loaded[name] - arr).max() <= tol, name  # and close to the original
    assert tok is not None and tok.model == "gpt2" and tok.chat_template == CHAT_TEMPLATE
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and len(tok.tokens) == model.vocab_size


def test_matches_transformers_gguf_loader(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = dataclasses.replace(TINY, tie_word_embeddings=False)
    path = write_gguf(tmp_path / "tiny.gguf", model, random_weights(model, 1), QTYPES)
    _, loaded, _ = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    sd = hf.state_dict()
    for name in loaded:
        np.testing.assert_array_equal(loaded[name], sd[name].numpy(), err_msg=name)
    # ... and the reference executor agrees with HF on the logits
    ids = [5, 77, 123, 9, 250]
    ref = ReferenceExecutor(model, loaded, 1, 8)
    ours = np.stack([ref.step(np.array([t]), np.array([i]))[0] for i, t in enumerate(ids)])
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4)


def test_qwen2_has_biases_and_no_permutation(tmp_path: Path) -> None:
    model = dataclasses.replace(TINY, model_type="qwen2", attention_bias=True)
    w = random_weights(model, 2)
    path = write_gguf(tmp_path / "q.gguf", model, w, {})
    m, loaded, _ = load_gguf(path)
    assert m == model
    for name in w:
        np.testing.assert_array_equal(loaded[name], w[name], err_msg=name)


def test_tokenizer_from_metadata(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    path = write_gguf(tmp_path / "tiny.gguf", TINY, random_weights(TINY), {})
    tok = load_checkpoint(path).tokenizer()
    ids = tok.encode(" the cat is")  # merges exist for " the", " cat", " is" but not "the"
    assert [tok.decode([i]) for i in ids] == [" the", " cat", " is"]
    assert [tok.decode([i]) for i in tok.encode("the")] == ["t", "he"]
    assert tok.decode(ids) == " the cat is"
    chat = tok.apply_chat_template("hi")
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    cids = tok.encode(chat)
    assert cids[0] == 1 and cids.count(2) == 1  # special tokens stay whole
    assert tok.eos_token_ids == [2] and tok.bos_token_id == 1
    s = tok.stream()
    assert "".join(s.push(i) for i in tok.encode("héllo")) == "héllo"


@pytest.mark.parametrize("case,match", [
    ("missing", r"'model\.layers\.1\.mlp\.down_proj\.weight' is missing"),
    ("extra", r"unexpected tensor 'blk\.0\.ffn_gate_inp\.weight'"),
    # a Qwen3 tensor in a llama file: known by name, but not part of this model
    ("extra-qk-norm", r"unexpected tensor 'model\.layers\.0\.self_attn\.q_norm\.weight'.*llama"),
    ("shape", r"'model\.layers\.0\.self_attn\.v_proj\.weight' has shape \(16, 64\); expected \(32, 64\)"),
    ("arch", r"general\.architecture = 'gpt2'"),
])
def test_errors_name_the_tensor(tmp_path: Path, case: str, match: str) -> None:
    w = random_weights(TINY)
    kw: dict = {}
    if case == "missing":
        kw["skip"] = ("model.layers.1.mlp.down_proj.weight",)
    elif case == "extra":
        kw["extra"] = {"blk.0.ffn_gate_inp.weight": np.ones((4, 64), np.float32)}  # an MoE router
    elif case == "extra-qk-norm":
        kw["extra"] = {"blk.0.attn_q_norm.weight": np.ones(16, np.float32)}
    elif case == "shape":
        w["model.layers.0.self_attn.v_proj.weight"] = w["model.layers.0.self_attn.v_proj.weight"][:16]
    elif case == "arch":
        kw["arch"] = "gpt2"
    path = write_gguf(tmp_path / "bad.gguf", TINY, w, {}, **kw)
    with pytest.raises(CheckpointError, match=match):
        load_gguf(path)


def test_config_override_and_rope_freqs(tmp_path: Path) -> None:
    w = random_weights(TINY)
    path = write_gguf(tmp_path / "r.gguf", TINY, w, {}, extra={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(CheckpointError, match="rope_freqs"):
        load_gguf(path)
    m, loaded, _ = load_gguf(path, TINY)  # with an explicit config the factors are not needed
    assert m == TINY and "rope_freqs.weight" not in loaded
    bigger = dataclasses.replace(TINY, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.2\..*' is missing"):
        load_gguf(path, bigger)


def test_not_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 4)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        load_gguf(p)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file_names_file_and_tensor(tmp_path: Path, keep: float) -> None:
    """A GGUF file cut short: one line naming the file and the first tensor (by data offset, as
    the gguf package reads the whole file) whose data the cut loses."""
    import gguf

    full = write_gguf(tmp_path / "full.gguf", TINY, random_weights(TINY, 5), {"q_proj.weight": "Q8_0"})
    data = full.read_bytes()
    cut = int(len(data) * keep)
    lost = sorted((t.data_offset, t.name) for t in gguf.GGUFReader(full).tensors if t.data_offset + t.n_bytes > cut)
    short = tmp_path / "short.gguf"
    short.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as e:
        m, w, _ = load_gguf(short)
        for name in w:  # a lazy reader would only fail here
            w[name]
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith(f"{short}: ") and f"tensor {lost[0][1]!r}" in msg and "truncated" in msg, msg


def test_truncated_header(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "full.gguf", TINY, random_weights(TINY, 6), {})
    short = tmp_path / "short.gguf"
    short.write_bytes(full.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{short}: not a readable GGUF file: .*truncated"):
        load_gguf(short)


def test_corrupt_tensor_type_names_the_tensor(tmp_path: Path) -> None:
    """A tensor's type field overwritten with a value no GGML type has (found with the gguf
    package's own reader of the intact file)."""
    import gguf

    full = write_gguf(tmp_path / "full.gguf", TINY, random_weights(TINY, 7), {})
    reader = gguf.GGUFReader(full)
    t = reader.tensors[3]
    type_field = t.field.parts[4]  # name length, name, n_dims, dims, type, offset: views of the mapped file
    at = type_field.ctypes.data - reader.data.ctypes.data
    data = bytearray(full.read_bytes())
    assert int.from_bytes(data[at:at + 4], "little") == int(t.tensor_type)
    data[at:at + 4] = (250).to_bytes(4, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{bad}: .*tensor {t.name!r} has type 250"):
        load_gguf(bad)


def test_qwen3_q_k_norms_no_permutation_and_transformers_agrees(tmp_path: Path) -> None:
    """Qwen3: attn_q_norm / attn_k_norm read as q_norm / k_norm, Q/K rows as stored (llama.cpp's
    Qwen3 converter does not permute them); transformers' own GGUF loader reads the same tensors,
    and its Qwen3 model gives the reference executor's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # head_dim 128: transformers' GGUF reader takes Qwen3Config's default head_dim, not the file's key_length.
    model = dataclasses.replace(TINY, model_type="qwen3", qk_norm=True, head_dim=128, tie_word_embeddings=False)
    w = random_weights(model, 3)
    assert "model.layers.1.self_attn.k_norm.weight" in w
    path = write_gguf(tmp_path / "q3.gguf", model, w, {"q_proj.weight": "Q8_0", "k_proj.weight": "F16"})
    m, loaded, _ = load_gguf(path)
    assert m == model
    for name in w:
        q = "Q8_0" if name.endswith("q_proj.weight") else "F16" if name.endswith("k_proj.weight") else "F32"
        np.testing.assert_array_equal(loaded[name], stored(w[name], q), err_msg=name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    sd = hf.state_dict()
    for name in loaded:
        np.testing.assert_array_equal(loaded[name], sd[name].numpy(), err_msg=name)
    ids = [5, 77, 123, 9, 250]
    ref = ReferenceExecutor(model, loaded, 1, 8)
    ours = np.stack([ref.step(np.array([t]), np.array([i]))[0] for i, t in enumerate(ids)])
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4)
