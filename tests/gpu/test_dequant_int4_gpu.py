"""The device's 4-bit decode (adamk/dequant.cuh, decode4) against the host's model of it
(tests/q4_warp_model.decode_word: the magic-number decode and one bf16 fma, bit by bit) and against
ada_mk.runtime.weights_int4.kernel_weights: fresh random code vectors and (scale, offset) pairs,
every code value in every nibble position, scales and offsets of both signs and many magnitudes."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from ada_mk.codegen.build import TEMPLATES
from tests.q4_warp_model import decode_word

pytestmark = pytest.mark.gpu

N = 4096  # lanes, one 8-byte code vector and two pairs each

KERNEL = r"""
#include "adamk/dequant.cuh"
extern "C" __global__ void decode_all(const uint2* codes, const uint32_t* pairs, uint4* out, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  adamk::thread::decode4(codes[t], pairs[2 * t], pairs[2 * t + 1], out[2 * t], out[2 * t + 1]);
}
"""


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_decode4_on_the_device(tmp_path):
    import torch
    from cuda.bindings import driver

    from ada_mk.runtime.engine import _check

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    rng = np.random.default_rng()
    codes = rng.integers(0, 2 ** 32, (N, 2), dtype=np.uint64).astype(np.uint32)
    codes[:16] = np.arange(16, dtype=np.uint32)[:, None] * 0x11111111  # every code in every nibble
    scale = rng.uniform(-1, 1, 2 * N) * 2.0 ** rng.integers(-20, 4, 2 * N)
    offset = rng.uniform(-1, 1, 2 * N) * 2.0 ** rng.integers(-20, 6, 2 * N)
    pairs = _bf16_bits(scale).astype(np.uint32) | _bf16_bits(offset).astype(np.uint32) << 16
    (tmp_path / "k.cu").write_text(KERNEL)
    subprocess.run([nvcc, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-I", str(TEMPLATES),
                    "-o", str(tmp_path / "k.cubin"), str(tmp_path / "k.cu")], check=True)
    torch.cuda.init()
    module = _check(driver.cuModuleLoadData((tmp_path / "k.cubin").read_bytes()))
    fn = _check(driver.cuModuleGetFunction(module, b"decode_all"))
    c_dev = torch.from_numpy(codes.view(np.int32).copy()).cuda()
    p_dev = torch.from_numpy(pairs.view(np.int32).copy()).cuda()
    out = torch.zeros(N * 16, dtype=torch.int16, device="cuda")
    n = ctypes.c_int(N)
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (c_dev, p_dev, out)]
    params = (ctypes.c_void_p * 4)(*[ctypes.addressof(p) for p in ptrs], ctypes.addressof(n))
    _check(driver.cuLaunchKernel(fn, N // 128, 1, 1, 128, 1, 1, 0, 0, ctypes.addressof(params), 0))
    torch.cuda.synchronize()
    got = (out.cpu().numpy().view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(N, 2, 8)
    for lane in range(N):
        for h in range(2):
            want = decode_word(int(codes[lane, h]), int(pairs[2 * lane + h]))
            assert np.array_equal(got[lane, h], want.astype(np.float32)), (lane, h, got[lane, h], want)
