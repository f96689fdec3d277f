"""The device's 8-bit code conversions (adamk/dequant.cuh) against the host's decoders, for every
code: FP8 E4M3 (subnormals, zeros, both signs; NaN codes excluded, no quantizer emits them) and int8
(stored as value + 128), and decode8's split of a 16-byte vector into its two 32-column halves."""
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
#include "adamk/dequant.cuh"
// Thread t < 64: codes 4t .. 4t + 3 through each conversion. Thread t < 16: the 16-byte vector of
// codes 16t .. 16t + 15 through decode8, halves a then b.
extern "C" __global__ void decode_all(uint2* fp8, uint2* int8, uint4* fp8_halves, uint4* int8_halves) {
  const int t = threadIdx.x;
  const auto word = [](int c0) { return (c0 & 255u) | (c0 + 1u & 255u) << 8 | (c0 + 2u & 255u) << 16 | (c0 + 3u & 255u) << 24; };
  if (t < 64) {
    fp8[t] = adamk::thread::fp8x4_to_bf16(word(4 * t));
    int8[t] = adamk::thread::int8x4_to_bf16(word(4 * t));
  }
  if (t < 16) {
    const uint4 v = make_uint4(word(16 * t), word(16 * t + 4), word(16 * t + 8), word(16 * t + 12));
    adamk::thread::decode8<adamk::FP8>(v, fp8_halves[2 * t], fp8_halves[2 * t + 1]);
    adamk::thread::decode8<adamk::INT8>(v, int8_halves[2 * t], int8_halves[2 * t + 1]);
  }
}
"""


def _bf16_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


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
    outs = [torch.zeros(256, dtype=torch.int16, device="cuda") for _ in range(4)]  # makes torch's context current
    module = _check(driver.cuModuleLoadData((d / "k.cubin").read_bytes()))
    fn = _check(driver.cuModuleGetFunction(module, b"decode_all"))
    ptrs = [ctypes.c_void_p(o.data_ptr()) for o in outs]
    params = (ctypes.c_void_p * 4)(*[ctypes.addressof(p) for p in ptrs])
    _check(driver.cuLaunchKernel(fn, 1, 1, 1, 64, 1, 1, 0, 0, ctypes.addressof(params), 0))
    torch.cuda.synchronize()
    return [_bf16_to_float(o.cpu().numpy().view(np.uint16)) for o in outs]


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
