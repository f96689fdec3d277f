"""The asynchronous, device-side C API on the GPU (adamk_decode_async, adamk_synchronize,
adamk_kv_cache, borrowed weights) and the PyTorch custom operator over it: SmolLM2-135M with random
weights, against the synchronous API (same library) and HF transformers.

    ADAMK_CACHE=.devbuild python -m tests.gpu.test_capi_gpu      # prebuilds the library used here
"""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.runtime.capi import SharedLibrary

from .test_capi_gpu import (DECODE_STEPS, PROMPT, REL_TOL, library_for, packed, plan, reference, rel_err,  # noqa: F401
                            run_steps, weights)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def sync_run(plan, packed, reference):
    """The synchronous API's tokens and logits over the reference's fed tokens."""
    lib = SharedLibrary(library_for(plan).library)
    try:
        lib.create(packed)
        return run_steps(lib, reference[0])
    finally:
        lib.close()


@pytest.fixture()
def device_lib(plan, packed):
    """A session whose weights live in a CUDA tensor that it uses in place (weights_on_device = 2)."""
    w = torch.from_numpy(packed.view(np.int16)).cuda()
    lib = SharedLibrary(library_for(plan).library)
    lib.create(w.data_ptr(), borrow=True)
    yield lib
    lib.close()
    del w


def _cuda_i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device="cuda")


def test_async_steps_equal_the_sync_api(plan, device_lib, reference, sync_run) -> None:
    """Steps on a caller's stream, inputs and outputs in device memory, borrowed weights: the
    same tokens and bitwise the same logits as the synchronous API."""
    fed, ref_logits = reference
    _, sync_logits = sync_run
    stream = torch.cuda.Stream()
    nxt, npos = _cuda_i32([0]), _cuda_i32([0])
    logits = torch.empty((plan.batch, plan.model.vocab_size), dtype=torch.float32, device="cuda")
    with torch.cuda.stream(stream):
        for pos, tok in enumerate(fed):
            t, p = _cuda_i32([tok]), _cuda_i32([pos])
            device_lib.decode_async(stream.cuda_stream, t.data_ptr(), p.data_ptr(), nxt.data_ptr(), npos.data_ptr(),
                                    logits.data_ptr())
            device_lib.synchronize(stream.cuda_stream)
            assert int(npos.item()) == pos + 1
            np.testing.assert_array_equal(logits.cpu().numpy(), sync_logits[pos])
            assert rel_err(logits.cpu().numpy(), ref_logits[pos]) <= REL_TOL


def test_custom_op_in_a_cuda_graph(plan, device_lib, reference, sync_run) -> None:
    """torch.ops.adamk.decode_step captured once in a CUDA graph, the graph chaining each step's
    outputs into the next step's inputs: every replay is the next step, with the synchronous API's
    logits bitwise. Also the replay's time per step, printed beside the eager chain's."""
    from ada_mk.runtime.torch_op import register_session, unregister_session

    fed, _ = reference
    _, sync_logits = sync_run
    handle = register_session(device_lib)
    tok, pos = _cuda_i32([fed[0]]), _cuda_i32([0])
    nxt, npos = _cuda_i32([0]), _cuda_i32([0])
    logits = torch.empty((plan.batch, plan.model.vocab_size), dtype=torch.float32, device="cuda")
    forced = _cuda_i32(fed)  # the fed tokens: prompt, then the reference's choices
    stream = torch.cuda.Stream()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            # Capture: one step, then its next position becomes the input, the fed token at it the token.
            with torch.cuda.graph(graph, stream=stream):
                torch.ops.adamk.decode_step(handle, tok, pos, nxt, npos, logits)
                pos.copy_(npos)
                tok.copy_(forced.index_select(0, torch.clamp(npos.long(), max=len(fed) - 1)))
            device_lib.synchronize(stream.cuda_stream)
            # The capture ran nothing: reset the session and the inputs, then replay step by step.
            device_lib.reset()
            tok.fill_(fed[0])
            pos.zero_()
            for step in range(len(fed)):
                graph.replay()
                device_lib.synchronize(stream.cuda_stream)
                np.testing.assert_array_equal(logits.cpu().numpy(), sync_logits[step], err_msg=f"step {step}")
            # Time: 200 replays chained on the device.
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            pos.fill_(len(fed) - 1)
            start.record(stream)
            for _ in range(200):
                graph.replay()
            end.record(stream)
            device_lib.synchronize(stream.cuda_stream)
            print(f"CUDA graph replay: {start.elapsed_time(end) / 200 * 1e3:.1f} us/step")
    finally:
        unregister_session(handle)


def test_bad_device_inputs_are_refused_then_the_session_goes_on(plan, device_lib, reference, sync_run) -> None:
    """A token out of range in device memory (which the host cannot check without waiting): the
    step runs nothing, adamk_synchronize names the sequence and value, and the next good step
    gives the synchronous API's logits."""
    fed, _ = reference
    _, sync_logits = sync_run
    nxt, npos = _cuda_i32([0]), _cuda_i32([0])
    logits = torch.zeros((plan.batch, plan.model.vocab_size), dtype=torch.float32, device="cuda")
    bad_tok, bad_pos = _cuda_i32([plan.model.vocab_size + 5]), _cuda_i32([0])
    device_lib.decode_async(0, bad_tok.data_ptr(), bad_pos.data_ptr(), nxt.data_ptr(), npos.data_ptr())
    with pytest.raises(RuntimeError, match=rf"refused its inputs.*sequence 0 has token {plan.model.vocab_size + 5}"):
        device_lib.synchronize(0)
    for p, t in enumerate(fed[:3]):
        tok, pos = _cuda_i32([t]), _cuda_i32([p])  # alive until the step has read them
        device_lib.decode_async(0, tok.data_ptr(), pos.data_ptr(), nxt.data_ptr(), npos.data_ptr(), logits.data_ptr())
        device_lib.synchronize(0)
        np.testing.assert_array_equal(logits.cpu().numpy(), sync_logits[p])
    with pytest.raises(RuntimeError, match="not device memory"):
        host = np.zeros(1, np.int32)
        device_lib.decode_async(0, host.ctypes.data, bad_pos.data_ptr(), nxt.data_ptr())


def test_external_prefill_writes_the_kv_cache(plan, packed, weights) -> None:
    """An external prefill engine (HF here) writes the prompt's K and V through adamk_kv_cache;
    the kernel's next step, at the prompt's length, gives HF's logits for the next token."""
    from transformers import AutoModelForCausalLM

    from tests.hf_util import hf_config_from_model

    m = plan.model
    hf = AutoModelForCausalLM.from_config(hf_config_from_model(m, "eager"), dtype=torch.float32).cuda().eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    if m.tie_word_embeddings:
        hf.tie_weights()
    prompt = torch.tensor([PROMPT + [77]], device="cuda")
    with torch.no_grad():
        out = hf(prompt[:, :-1], use_cache=True)
        want = hf(prompt[:, -1:], past_key_values=out.past_key_values, use_cache=True).logits[0, -1]
    lib = SharedLibrary(library_for(plan).library)
    try:
        lib.create(packed)
        k_ptr, v_ptr = lib.kv_cache()
        maxctx, nkv, hd = plan.deploy.max_context, m.num_key_value_heads, m.head_dim
        per_layer = plan.batch * nkv * maxctx * hd
        cache = out.past_key_values
        for layer in range(m.num_hidden_layers):
            k, v = (cache.layers[layer].keys, cache.layers[layer].values) if hasattr(cache, "layers") else cache[layer]
            for src, base in ((k, k_ptr), (v, v_ptr)):  # HF's cache holds the prompt and the step after it
                dst = torch.zeros((plan.batch, nkv, maxctx, hd), dtype=torch.bfloat16, device="cuda")
                dst[:, :, :len(PROMPT)] = src.reshape(plan.batch, nkv, -1, hd)[:, :, :len(PROMPT)].to(torch.bfloat16)
                torch.cuda.synchronize()
                _copy_to(base + 2 * layer * per_layer, dst)
        _, logits = lib.decode([77], [len(PROMPT)], want_logits=True)
    finally:
        lib.close()
    err = rel_err(logits[0], want.cpu().numpy())
    print(f"external prefill, then one kernel step: rel err {err:.2e}")
    assert err <= REL_TOL


def _copy_to(address: int, t: torch.Tensor) -> None:
    from cuda.bindings import driver

    err, = driver.cuMemcpyDtoD(address, t.data_ptr(), t.numel() * t.element_size())
    assert err == driver.CUresult.CUDA_SUCCESS, err
