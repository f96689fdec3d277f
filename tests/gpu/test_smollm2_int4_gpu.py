"""The real SmolLM2-135M-Instruct Q4_1 GGUF streamed natively in int4 (group 32: its Q4_1 / Q4_0
matrices packed as stored, the rest quantized on load): the MegaKernel's greedy tokens equal HF
transformers' (fp32) on the weights the kernel multiplies, and HF's on the GGUF itself, for the three
prompts; adamk-run --weights-format int4 --weights-group 32 streams that text; the packed buffer is
at most 0.6x the bf16 packing's bytes. Kernels prebuilt by tests/gpu/smollm2_kernels.py."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from tests.gpu.test_smollm2_gpu import _gpu_name, ck, hf, hf_tokens, path, tok  # noqa: F401 - module fixtures
from tests.smollm2_cases import N_NEW, PROMPTS, hf_greedy, prompt_ids

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def kernel4(ck):
    from tests.gpu.smollm2_kernels import smollm2_kernel

    return smollm2_kernel(ck.model, _gpu_name(), library=False, weights="int4")


def sources(ck, plan):
    """What adamk-run packs: the GGUF's 4-bit matrices as stored, the rest quantized on load."""
    from ada_mk.checkpoints.pack import PackingSources
    from ada_mk.search.layout import make_layout

    return PackingSources(ck.weights, ck.quantized, make_layout(plan), ck.int4)


@pytest.fixture(scope="module")
def hf4(hf, ck, kernel4):
    """HF's model with every linear weight (and the LM head, untied) replaced by the weights the
    kernel multiplies (weights_q8.dequantized_weights: int4 segments as weights_int4 packs them)."""
    import torch

    from ada_mk.runtime.weights_q8 import dequantized_weights
    from ada_mk.search.layout import make_layout

    plan, _ = kernel4
    deq = dequantized_weights(make_layout(plan), sources(ck, plan))
    m = copy.deepcopy(hf)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in deq and name != "lm_head.weight":
                p.copy_(torch.from_numpy(np.ascontiguousarray(deq[name])).to(p))
        m.lm_head.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(deq["lm_head.weight"])).to(
            m.lm_head.weight))
        m.config.tie_word_embeddings = False
    return m


@pytest.fixture(scope="module")
def hf4_tokens(hf4, tok) -> list[list[int]]:
    return [hf_greedy(hf4, prompt_ids(tok, text, chat), N_NEW) for text, chat in PROMPTS]


@pytest.mark.parametrize("case", range(len(PROMPTS)))
def test_int4_kernel_greedy_matches_hf(kernel4, ck, tok, hf4_tokens, hf_tokens, case: int) -> None:  # noqa: F811
    from ada_mk.runtime.engine import MegaKernelEngine

    plan, art = kernel4
    with MegaKernelEngine(plan, art.fatbin) as eng:
        eng.load_weights(sources(ck, plan))
        got = eng.generate(np.array([prompt_ids(tok, *PROMPTS[case])], np.int32), N_NEW)[0].tolist()
    print(f"\n[int4 {case}] kernel: {tok.decode(got)!r}")
    assert got == hf4_tokens[case], f"kernel {tok.decode(got)!r}\n HF    {tok.decode(hf4_tokens[case])!r}"
    # the criterion: HF transformers on the GGUF itself (gguf's dequantization, no bf16 pairs)
    assert got == hf_tokens[case], f"kernel {tok.decode(got)!r}\n HF on the GGUF {tok.decode(hf_tokens[case])!r}"


def test_int4_packed_bytes(ck, kernel4) -> None:
    from ada_mk.search.layout import make_layout
    from tests.gpu.smollm2_kernels import smollm2_plan

    plan, _ = kernel4
    bf16 = make_layout(smollm2_plan(ck.model, _gpu_name())).weights.total_bytes
    int4 = make_layout(plan).weights.total_bytes
    print(f"\npacked bytes: int4 {int4:,}, bf16 {bf16:,} ({int4 / bf16:.2f}x)")
    assert int4 <= 0.6 * bf16


def test_adamk_run_int4_streams_hf_text(path: Path, tok, hf4_tokens) -> None:  # noqa: F811
    from click.testing import CliRunner

    from ada_mk.cli.run import main

    text, _ = PROMPTS[0]
    r = CliRunner().invoke(main, ["--weights", str(path), "--weights-format", "int4", "--weights-group", "32",
                                  "--prompt", text, "-n", str(N_NEW), "--prefill", "kernel", "--print-ids",
                                  "--ignore-eos"])
    assert r.exit_code == 0, r.output
    print(f"\nadamk-run --weights-format int4: {r.stdout!r}\n{r.stderr}")
    assert "4-bit matrices streamed as stored" in r.stderr
    ids = [int(x) for x in r.stderr.split("ids: ")[1].split("\n")[0].split()]
    assert ids == hf4_tokens[0]
    assert r.stdout.rstrip("\n") == tok.decode(hf4_tokens[0])
