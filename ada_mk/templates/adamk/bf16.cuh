// adamk/bf16.cuh: bf16 <-> float, one value or eight packed in 16 bytes (thread scope).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

namespace adamk::thread {

// Round to bf16 and back: reproduces the rounding a bf16 tensor applies at this point.
__device__ __forceinline__ float bf16_round(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

// Eight bf16 values packed in a uint4 (one 16-byte load), widened to float.
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

}  // namespace adamk::thread
