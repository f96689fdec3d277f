"""The real SmolLM2-135M-Instruct with its weights quantized to FP8 and to int8 on load: the
MegaKernel's greedy tokens equal HF transformers' (fp32) on the same dequantized weights for the
three prompts, and adamk-run --weights-format streams that text. Kernels prebuilt by
tests/gpu/smollm2_kernels.py; the GGUF as for test_smollm2_gpu.py."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from tests.gpu.test_smollm2_gpu import _gpu_name, ck, hf, path, tok  # noqa: F401 - module fixtures
from tests.smollm2_cases import N_NEW, PROMPTS, hf_greedy, prompt_ids

pytestmark = pytest.mark.gpu

FORMATS = ("fp8", "int8")


@pytest.fixture(scope="module", params=FORMATS)
def weights(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def kernel8(ck, weights):
    from tests.gpu.smollm2_kernels import smollm2_kernel

    return smollm2_kernel(ck.model, _gpu_name(), library=False, weights=weights)


def sources(ck, plan):
    """The tensors an 8-bit kernel packs, as adamk-run gives them: the file's own 8-bit matrices of
    the plan's format as stored, the rest quantized on load."""
    from ada_mk.checkpoints.pack import PackingSources
    from ada_mk.search.layout import make_layout

    return PackingSources(ck.weights, ck.quantized, make_layout(plan))


@pytest.fixture(scope="module")
def hf8(hf, ck, kernel8):
    """HF's model with every linear weight (and the LM head, untied) replaced by the weights the
    kernel multiplies: the loaded checkpoint's, quantized as packing quantizes them, dequantized."""
    import torch

    from ada_mk.runtime.weights_q8 import dequantized_weights
    from ada_mk.search.layout import make_layout

    plan, _ = kernel8
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
def hf8_tokens(hf8, tok) -> list[list[int]]:
    return [hf_greedy(hf8, prompt_ids(tok, text, chat), N_NEW) for text, chat in PROMPTS]


@pytest.mark.parametrize("case", range(len(PROMPTS)))
def test_8bit_kernel_greedy_matches_hf(kernel8, ck, tok, hf8_tokens, weights, case: int) -> None:
    from ada_mk.runtime.engine import MegaKernelEngine

    plan, art = kernel8
    with MegaKernelEngine(plan, art.fatbin) as eng:
        eng.load_weights(sources(ck, plan))
        got = eng.generate(np.array([prompt_ids(tok, *PROMPTS[case])], np.int32), N_NEW)[0].tolist()
    print(f"\n[{weights} {case}] kernel: {tok.decode(got)!r}")
    assert got == hf8_tokens[case], f"kernel {tok.decode(got)!r}\n HF    {tok.decode(hf8_tokens[case])!r}"


def test_adamk_run_8bit_streams_hf_text(path: Path, tok, hf8_tokens, weights) -> None:
    from click.testing import CliRunner

    from ada_mk.cli.run import main

    text, _ = PROMPTS[0]
    r = CliRunner().invoke(main, ["--weights", str(path), "--weights-format", weights, "--prompt", text, "-n",
                                  str(N_NEW), "--prefill", "kernel", "--print-ids", "--ignore-eos"])
    assert r.exit_code == 0, r.output
    print(f"\nadamk-run --weights-format {weights}: {r.stdout!r}\n{r.stderr}")
    ids = [int(x) for x in r.stderr.split("ids: ")[1].split("\n")[0].split()]
    assert ids == hf8_tokens[0]
    assert r.stdout.rstrip("\n") == tok.decode(hf8_tokens[0])
