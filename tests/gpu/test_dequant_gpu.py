"""The device's 8-bit code conversions to f16 (adamk/dequant.cuh) against the host's decoders, for
every code: FP8 E4M3 (subnormals, zeros, both signs; NaN codes excluded, no quantizer emits them) and
int8 (stored as value + 128), and decode8's split of a 16-byte vector into its two 32-column halves;
and the staged activations' bf16 -> f16 conversion (adamk/bf16.cuh), exact in f16's range,
saturated beyond it."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from ada_mk.codegen.build import TEMPLATES
from ada_mk.quant import decode_e4m3

pytestmark = pytest.mark.gpu

KERNEL = r"""
#include "adamk/bf16.cuh"
#include "adamk/dequant.cuh"
// Thread t < 64: codes 4t .. 4t + 3 through each conversion. Thread t < 16: the 16-byte vector of
// codes 16t .. 16t + 15 through decode8, halves a then b.
// Thread t < 32: bf16 words bf16_in[t] through bf16x2_to_f16x2.
extern "C" __global__ void decode_all(uint2* fp8, uint2* int8, uint4* fp8_halves, uint4* int8_halves,
                                      const uint32_t* bf16_in, uint32_t* f16_out) {
  const int t = threadIdx.x;
  const auto word = [](int c0) { return (c0 & 255u) | (c0 + 1u & 255u) << 8 | (c0 + 2u & 255u) << 16 | (c0 + 3u & 255u) << 24; };
  if (t < 64) {
    fp8[t] = adamk::thread::fp8x4_to_f16(word(4 * t));
    int8[t] = adamk::thread::int8x4_to_f16(word(4 * t));
  }
  if (t < 32) f16_out[t] = adamk::thread::bf16x2_to_f16x2(bf16_in[t]);
  if (t < 16) {
    const uint4 v = make_uint4(word(16 * t), word(16 * t + 4), word(16 * t + 8), word(16 * t + 12));
    adamk::thread::decode8<adamk::FP8>(v, fp8_halves[2 * t], fp8_halves[2 * t + 1]);
    adamk::thread::decode8<adamk::INT8>(v, int8_halves[2 * t], int8_halves[2 * t + 1]);
  }
}
"""


# bf16 activations for the f16 conversion: every exponent from 2^-20 to 2^17 with random mantissas
# and signs (f16 subnormals below 2^-14, saturation above 65504), infinities and a NaN.
def _bf16_inputs(rng: np.random.Generator) -> np.ndarray:
    exps = np.arange(-20, 18)
    vals = np.ldexp(1.0 + rng.integers(0, 128, 64) / 128.0, rng.choice(exps, 64)) * rng.choice([-1.0, 1.0], 64)
    vals[:4] = [np.inf, -np.inf, np.nan, 0.0]
    bits = (vals.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact: 8 significant bits
    return bits

@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    import torch
    from cuda.bindings import driver

    from ada_mk.runtime.engine import _check

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    d = tmp_path_factory.mktemp("dequant")
    (d / "k.cu").write_text(KERNEL)
    subprocess.run([nvcc, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-I", str(TEMPLATES),
                    "-o", str(d / "k.cubin"), str(d / "k.cu")], check=True)
    bf16_in = _bf16_inputs(np.random.default_rng())
    outs = [torch.zeros(256, dtype=torch.int16, device="cuda") for _ in range(4)]  # makes torch's context current
    outs += [torch.from_numpy(bf16_in.view(np.int16)).cuda(), torch.zeros(64, dtype=torch.int16, device="cuda")]
    module = _check(driver.cuModuleLoadData((d / "k.cubin").read_bytes()))
    fn = _check(driver.cuModuleGetFunction(module, b"decode_all"))
    ptrs = [ctypes.c_void_p(o.data_ptr()) for o in outs]
    params = (ctypes.c_void_p * 6)(*[ctypes.addressof(p) for p in ptrs])
    _check(driver.cuLaunchKernel(fn, 1, 1, 1, 64, 1, 1, 0, 0, ctypes.addressof(params), 0))
    torch.cuda.synchronize()
    f16 = [o.cpu().numpy().view(np.float16).astype(np.float32) for o in outs[:4]]
    bf16 = (bf16_in.astype(np.uint32) << 16).view(np.float32)
    return [*f16, bf16, outs[5].cpu().numpy().view(np.float16)]


def test_fp8_codes_decode_exactly(decoded):
    codes = np.arange(256, dtype=np.uint8)
    want = decode_e4m3(codes)
    finite = ~np.isnan(want)
    assert (decoded[0][finite] == want[finite]).all()
    assert np.array_equal(np.signbit(decoded[0][finite]), np.signbit(want[finite]))  # -0 stays -0
    assert (want[finite] != 0).sum() > 200 and (np.abs(want[finite]) < 2.0 ** -6).sum() > 10  # subnormals tried


def test_int8_codes_decode_exactly(decoded):
    values = np.arange(256) - 128.0  # code c holds c - 128
    assert (decoded[1] == values).all()


def test_decode8_splits_the_halves(decoded):
    # the 16 codes of a vector decode in order: bytes 0-7 to half a, 8-15 to half b
    codes = np.arange(256, dtype=np.uint8)
    want = decode_e4m3(codes)
    finite = ~np.isnan(want)
    assert (decoded[2][finite] == want[finite]).all()
    assert (decoded[3] == np.arange(256) - 128.0).all()


def test_bf16_activations_convert_to_f16_exactly_or_saturate(decoded):
    x, got = decoded[4], decoded[5]
    want = np.clip(x, -65504.0, 65504.0).astype(np.float16)  # numpy rounds to nearest even, as cvt.rn
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    assert np.array_equal(got[~nan], want[~nan])
    in_range = ~nan & (np.abs(x) >= 2.0 ** -14) & (np.abs(x) <= 65504)
    assert (got[in_range].astype(np.float32) == x[in_range]).all()  # exact where f16 holds 11 bits
    assert (np.abs(got[~nan & (np.abs(x) > 65504)]) == 65504).all()
