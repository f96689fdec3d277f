"""`adamk-serve` as a process, on the real SmolLM2-135M-Instruct GGUF with the NumPy reference
backend: the `openai` client streams a chat completion and a completion at once (two slots),
each equal to HF transformers' greedy tokens; SIGTERM mid-stream drains it and exits 0."""
from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from ada_mk.checkpoints import load_checkpoint
from tests.serve_process import start_server
from tests.smollm2_cases import hf_greedy, hf_model, prompt_ids, single_threaded, smollm2_path

openai = pytest.importorskip("openai")
pytest.importorskip("gguf")
pytest.importorskip("transformers")
N_NEW = 12


def test_openai_client_and_sigterm_drain() -> None:
    path = smollm2_path()
    tok = load_checkpoint(path).tokenizer()
    cases = [("What is the tallest mountain in the world?", True), ("The capital of France is", False)]
    with single_threaded():
        hf = hf_model(path)
        want = []
        for text, chat in cases:
            out = hf_greedy(hf, prompt_ids(tok, text, chat), N_NEW)
            cut = next((i for i, t in enumerate(out) if t in tok.eos_token_ids), len(out))
            want.append(tok.decode(out[:cut]))
        del hf
    proc, port, log = start_server(path, "--backend", "reference", "--batch", "2", "--max-context", "128",
                                   "--prefill-chunk", "8")  # the prompts go in several chunks
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)

        def chat_stream() -> str:
            parts = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": cases[0][0]}],
                                              max_tokens=N_NEW, temperature=0, stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in parts if ch.choices)

        def completion_stream() -> str:
            parts = c.completions.create(model="smollm2", prompt=cases[1][0], max_tokens=N_NEW, temperature=0, stream=True)
            return "".join(ch.choices[0].text for ch in parts)

        with ThreadPoolExecutor(2) as pool:
            got = [f.result() for f in [pool.submit(chat_stream), pool.submit(completion_stream)]]
        assert got == want

        stream = c.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=N_NEW, temperature=0,
                                      stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        first = next(it)
        proc.send_signal(signal.SIGTERM)
        rest = list(it)
        assert [ch.choices[0].finish_reason for ch in rest][-1] == "length"
        assert first.choices[0].text + "".join(ch.choices[0].text for ch in rest)
        assert proc.wait(60) == 0, "".join(log)
        assert any("draining: 1 request" in line for line in log), "".join(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
