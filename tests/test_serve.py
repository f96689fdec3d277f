"""adamk-serve on the CPU: the official `openai` client, unmodified, against the server with the
NumPy reference backend and a tiny random-weight GGUF (HF transformers' greedy tokens are the
oracle), continuous batching across slots (each stream equals the request run alone), stop
strings, seeds, refusals (400, 503), client disconnects, /metrics, draining."""
from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_checkpoint
from ada_mk.ir.reference import ReferenceExecutor
from ada_mk.runtime.slots import ReferenceSlots
from ada_mk.serve.server import OpenAIServer
from tests.gguf_util import write_gguf
from tests.test_checkpoints_gguf import TINY, random_weights

openai = pytest.importorskip("openai")
MODEL = dataclasses.replace(TINY, tie_word_embeddings=False, max_position_embeddings=128)
CONTEXT = 96


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    return write_gguf(d / "tiny.gguf", MODEL, random_weights(MODEL, int(np.random.default_rng().integers(1 << 30))), {})


@pytest.fixture(scope="module")
def ck(tiny: Path):
    c = load_checkpoint(tiny)
    return c.model, {k: c.weights[k] for k in c.weights}, c.tokenizer()


class Slow(ReferenceSlots):
    """The reference with a pause before each step: keeps a slot busy long enough to observe."""

    delay = 0.02

    def step(self, tokens, positions, want_logits):
        time.sleep(self.delay)
        return super().step(tokens, positions, want_logits)


def start(ck, batch: int, *, cls=ReferenceSlots, **kw) -> OpenAIServer:
    model, weights, tok = ck
    s = OpenAIServer(cls(model, weights, batch, CONTEXT), tok, "tiny", port=0, **kw)
    s.start()
    return s


@pytest.fixture(scope="module")
def server(ck):
    s = start(ck, 3, prefill_chunk=4)  # prompts of 2-20 tokens: most go in several chunks
    yield s
    s.shutdown(10)


def client(s: OpenAIServer):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hf(tiny: Path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(tiny.parent, gguf_file=tiny.name, dtype=torch.float32).eval()


def hf_text(hf, tok, ids: list[int], n: int) -> tuple[str, str]:
    """HF's greedy continuation of `ids` as text, stopping at an end-of-sequence token, and the
    finish reason the server should give."""
    from tests.smollm2_cases import hf_greedy

    out = hf_greedy(hf, ids, n)
    stop = next((i for i, t in enumerate(out) if t in tok.eos_token_ids), None)
    if stop is not None:
        return tok.decode(out[:stop]), "stop"
    return tok.decode(out), "length"


def rand_prompt(rng, lo: int = 2, hi: int = 20) -> list[int]:
    return [int(t) for t in rng.integers(3, MODEL.vocab_size, rng.integers(lo, hi))]


def stream_text(c, **kw) -> tuple[str, str]:
    text, finish = [], None
    for ch in c.completions.create(stream=True, **kw):
        text.append(ch.choices[0].text)
        finish = ch.choices[0].finish_reason or finish
    return "".join(text), finish


# ------------------------------------------------------------------------------ the backend
def test_rows_of_one_slot_leave_the_others_alone(ck) -> None:
    """A prompt prefilled into one slot as T rows gives the logits of feeding it token by token
    at batch 1, and no other slot's cache changes."""
    model, weights, _ = ck
    rng = np.random.default_rng()
    ids = rand_prompt(rng, 5, 12)
    slots = ReferenceSlots(model, weights, 3, 32)
    slots.ex.k_cache[:] = rng.standard_normal(slots.ex.k_cache.shape)
    before = slots.ex.k_cache.copy()
    _, lg = slots.prefill(1, ids)
    one = ReferenceExecutor(model, weights, 1, 32)
    np.testing.assert_allclose(lg, one.prefill(np.asarray(ids)[None])[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(slots.ex.k_cache[:, [0, 2]], before[:, [0, 2]])
    np.testing.assert_allclose(slots.ex.k_cache[:, 1, :, :len(ids)], one.k_cache[:, 0, :, :len(ids)], rtol=1e-5, atol=1e-5)


def test_stream_decoder_gives_the_whole_decoding(ck) -> None:
    """Pieces pushed token by token, plus the flushed tail, are the tokenizer's decoding of the
    whole sequence, for random ids (partial UTF-8 sequences included)."""
    tok = ck[2]
    rng = np.random.default_rng()
    for _ in range(50):
        ids = [int(t) for t in rng.integers(0, MODEL.vocab_size, rng.integers(1, 60))]
        d = tok.stream()
        pieces = [d.push(i) for i in ids]
        assert "".join(pieces) + d.flush() == tok.decode(ids)
        assert all("\ufffd" not in p for p in pieces) or "\ufffd" in tok.decode(ids)


@pytest.mark.parametrize("start", [0, 7])
def test_hybrid_store_writes_one_slot(start: int) -> None:
    """HybridPrefill's store with a slot (and a chunk's start position): the K/V of one prompt
    land in that slot's block of the cache [layer][slot][kv_head][position][head_dim] at
    positions start..start+T-1, nothing else changes (the zero-copy view); _past reads the
    positions before start back."""
    torch = pytest.importorskip("torch")
    from ada_mk.runtime.hybrid import HybridPrefill

    L, B, nkv, C, d, T = 3, 4, 2, 16, 8, 5
    h = object.__new__(HybridPrefill)
    h.torch, h.zero_copy, h.cache_shape = torch, True, (L, B, nkv, C, d)
    h.k_cache = torch.randn(L * B * nkv * C * d).to(torch.bfloat16)
    h.v_cache = torch.randn(L * B * nkv * C * d).to(torch.bfloat16)
    k0, v0 = h.k_cache.clone().view(h.cache_shape), h.v_cache.clone().view(h.cache_shape)
    k, v = torch.randn(1, nkv, T, d), torch.randn(1, nkv, T, d)
    h._first_slot, h._start, h._rows = 2, start, 1
    h._store(1, k, v)
    kc, vc = h.k_cache.view(h.cache_shape), h.v_cache.view(h.cache_shape)
    end = start + T
    assert torch.equal(kc[1, 2, :, start:end], k[0].to(torch.bfloat16))
    assert torch.equal(vc[1, 2, :, start:end], v[0].to(torch.bfloat16))
    pk, pv = h._past(1)
    assert torch.equal(pk, k0[1, 2:3, :, :start]) and torch.equal(pv, v0[1, 2:3, :, :start])
    kc[1, 2, :, start:end], vc[1, 2, :, start:end] = k0[1, 2, :, start:end], v0[1, 2, :, start:end]
    assert torch.equal(kc, k0) and torch.equal(vc, v0)


# ------------------------------------------------------------------------------ the API
def test_completions_match_transformers(server, ck, hf) -> None:
    tok = ck[2]
    rng = np.random.default_rng()
    ids = rand_prompt(rng)
    want, reason = hf_text(hf, tok, ids, 12)
    c = client(server)
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, reason)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens <= 12
    assert stream_text(c, model="tiny", prompt=ids, max_tokens=12, temperature=0) == (want, reason)
    assert [m.id for m in c.models.list().data] == ["tiny"]


def test_chat_stream_and_whole(server, ck, hf) -> None:
    tok = ck[2]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    want, reason = hf_text(hf, tok, tok.encode(tok.apply_chat_template(msgs)), 10)
    c = client(server)
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want, reason)
    assert r.choices[0].message.role == "assistant"
    parts, finish, usage = [], None, None
    for ch in c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.usage is not None:
            usage = ch.usage
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
    assert ("".join(parts), finish) == (want, reason)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_concurrent_streams_equal_each_request_alone(server) -> None:
    """More requests than slots, mixed lengths, all at once: each stream is what the same
    request gives alone (greedy), so no slot's text leaks into another's."""
    rng = np.random.default_rng()
    reqs = [dict(model="tiny", prompt=rand_prompt(rng), max_tokens=int(rng.integers(4, 30)), temperature=0,
                 extra_body={"ignore_eos": True}) for _ in range(7)]
    c = client(server)
    alone = [stream_text(c, **kw) for kw in reqs]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(lambda kw: stream_text(client(server), **kw), reqs))
    assert together == alone
    assert all(f == "length" for _, f in together)


class Stepwise(ReferenceSlots):
    """The reference without bulk prefill: prompts go through the decode steps, a token per
    step, next to the other slots (as the kernel's --prefill kernel)."""

    bulk_prefill = False


def test_prompts_through_the_steps_match_transformers(ck, hf) -> None:
    tok = ck[2]
    rng = np.random.default_rng()
    prompts = [rand_prompt(rng) for _ in range(5)]
    want = [hf_text(hf, tok, ids, 10) for ids in prompts]
    s = start(ck, 2, cls=Stepwise)
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(lambda ids: stream_text(client(s), model="tiny", prompt=ids, max_tokens=10,
                                                        temperature=0), prompts))
    finally:
        s.shutdown(10)
    assert got == want


def test_seeded_sampling_repeats(server) -> None:
    c = client(server)
    rng = np.random.default_rng()
    ids = rand_prompt(rng)
    kw = dict(model="tiny", prompt=ids, max_tokens=12, temperature=1.0, top_p=0.9, extra_body={"ignore_eos": True})
    a = c.completions.create(seed=11, **kw).choices[0].text
    assert c.completions.create(seed=11, **kw).choices[0].text == a
    others = {c.completions.create(seed=s, **kw).choices[0].text for s in range(12, 18)}
    assert len(others | {a}) > 1  # different seeds, different samples


def test_stop_string_cuts_the_text(server) -> None:
    c = client(server)
    rng = np.random.default_rng()
    for _ in range(20):  # a continuation long enough to cut in its middle
        ids = rand_prompt(rng)
        full = c.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0].text
        if len(full) >= 8:
            break
    stop = full[len(full) // 2: len(full) // 2 + 3]
    want = full[:full.index(stop)]
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0, stop=[stop, "\x00never"],
                             extra_body={"ignore_eos": True})
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    assert stream_text(c, model="tiny", prompt=ids, max_tokens=20, temperature=0, stop=stop,
                       extra_body={"ignore_eos": True}) == (want, "stop")


@pytest.mark.parametrize("kw, match", [
    (dict(prompt="hi", n=2), "'n' must be 1"),
    (dict(prompt=[5] * CONTEXT), f"holds {CONTEXT}"),
    (dict(prompt=[5] * 10, max_tokens=CONTEXT), "lower max_tokens"),
    (dict(prompt="hi", temperature=5), "'temperature'"),
    (dict(prompt="hi", stop=["a", "b", "c", "d", "e"]), "'stop'"),
    (dict(prompt=[5, 1000]), "token ids must be in"),
    (dict(prompt="hi", max_tokens=0), "'max_tokens'"),
])
def test_bad_requests_are_400(server, kw, match) -> None:
    with pytest.raises(openai.BadRequestError, match=match) as e:
        client(server).completions.create(model="tiny", **kw)
    assert e.value.status_code == 400


def test_bad_bodies_are_400(server) -> None:
    for path, body, match in [("/v1/completions", b"{not json", "not valid JSON"),
                              ("/v1/chat/completions", b'{"messages": []}', "'messages'"),
                              ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 3}]}', "content")]:
        status, data = post(server, path, body)
        assert status == 400 and match in json.loads(data)["error"]["message"], data
    status, _ = post(server, "/v1/nowhere", b"{}")
    assert status == 404


def post(s: OpenAIServer, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_metrics_parse(server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client(server).completions.create(model="tiny", prompt="abc", max_tokens=4, temperature=0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("adamk_time_to_first_token_seconds", "adamk_inter_token_latency_seconds", "adamk_queue_depth",
                 "adamk_tokens_per_second", "adamk_generated_tokens"):
        assert name in fams, sorted(fams)
    ttft = {s.name: s.value for s in fams["adamk_time_to_first_token_seconds"].samples}
    assert ttft["adamk_time_to_first_token_seconds_count"] >= 1
    assert fams["adamk_slots"].samples[0].value == 3


def test_a_prompt_goes_in_chunks(server) -> None:
    """The fixture's server prefills 4 tokens a chunk: a prompt of T tokens is ceil(T/4) chunks
    in adamk_prefill_seconds, and its text is the same as ever (HF's, in the tests above)."""
    rng = np.random.default_rng()
    T = int(rng.integers(9, 30))
    before = server.metrics.prefill.count
    client(server).completions.create(model="tiny", prompt=rand_prompt(rng, T, T + 1), max_tokens=2, temperature=0)
    assert server.metrics.prefill.count - before == -(-T // 4)


# ------------------------------------------------------------------------------ slots and load
def test_queue_full_is_503_and_disconnect_frees_the_slot(ck) -> None:
    s = start(ck, 1, cls=Slow, max_queue=1)
    try:
        busy = raw_stream(s, {"prompt": [5, 6, 7], "max_tokens": 60, "temperature": 0, "ignore_eos": True})
        wait_for(lambda: s.metrics.active_slots == 1)
        queued = threading.Thread(target=lambda: client(s).completions.create(model="tiny", prompt="a", max_tokens=2))
        queued.start()
        wait_for(lambda: s.metrics.queue_depth == 1)
        with pytest.raises(openai.APIStatusError, match="queue is full") as e:
            client(s).completions.create(model="tiny", prompt="b", max_tokens=2)
        assert e.value.status_code == 503
        busy.close()  # the client goes away mid-stream
        queued.join(30)
        assert not queued.is_alive()  # it got the slot the cancelled stream freed
        assert s.metrics.requests.get("cancelled") == 1
        assert s.metrics.generated_tokens < 60 + 2
    finally:
        s.shutdown(10)


def test_disconnect_while_waiting_for_a_whole_answer(ck) -> None:
    """A non-streaming client that goes away is noticed while its request decodes: the slot is
    freed long before max_tokens."""
    s = start(ck, 1, cls=Slow)
    try:
        sock = socket.create_connection(("127.0.0.1", s.port))
        data = json.dumps({"prompt": [5, 6], "max_tokens": 80, "temperature": 0, "ignore_eos": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        wait_for(lambda: s.metrics.generated_tokens >= 3)
        sock.close()
        wait_for(lambda: s.metrics.requests.get("cancelled") == 1)
        assert s.metrics.active_slots == 0 and s.metrics.generated_tokens < 40
    finally:
        s.shutdown(10)


def raw_stream(s: OpenAIServer, body: dict) -> socket.socket:
    """A streaming request on a bare socket, its first event read."""
    sock = socket.create_connection(("127.0.0.1", s.port))
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    got = b""
    while b"data:" not in got:
        got += sock.recv(4096)
    return sock


def wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_shutdown_drains_in_flight_requests(ck) -> None:
    s = start(ck, 2, cls=Slow)
    results: list = []
    reqs = [dict(model="tiny", prompt=[5, 6, 7 + i], max_tokens=25, temperature=0, extra_body={"ignore_eos": True})
            for i in range(3)]  # three requests, two slots: one waits in the queue
    threads = [threading.Thread(target=lambda kw=kw: results.append(stream_text(client(s), **kw))) for kw in reqs]
    for t in threads:
        t.start()
    wait_for(lambda: s.metrics.active_slots == 2 and s.metrics.queue_depth == 1)
    assert s.shutdown(60)
    for t in threads:
        t.join(10)
    assert sorted(f for _, f in results) == ["length"] * 3
    with pytest.raises(openai.APIConnectionError):
        client(s).completions.create(model="tiny", prompt="a", max_tokens=2)


# ------------------------------------------------------------------------------ the command
@pytest.mark.parametrize("args, needle", [
    (["--weights", "/nonexistent.gguf"], "no such file"),
    (["--batch", "99"], "--batch"),
    (["--max-context", "100000"], "--max-context"),
    (["--backend", "tpu"], "--backend"),
    (["--port", "BUSY"], "cannot listen"),
    (["--prefill-chunk", "0"], "--prefill-chunk"),
])
def test_cli_errors_are_one_line(tiny: Path, args: list[str], needle: str) -> None:
    from click.testing import CliRunner

    from ada_mk.cli.serve import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    args = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in args]
    if "--weights" not in args:
        args = ["--weights", str(tiny), "--backend", "reference", "--max-context", "64"] + args
    try:
        r = CliRunner().invoke(main, args)
    finally:
        busy.close()
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("adamk-serve: error: ") and needle in lines[0], r.stderr
