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

// Four bf16 values packed in a uint2 (one 8-byte load), widened to float.
__device__ __forceinline__ void unpack4(const uint2& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x << 16);
  f[1] = __uint_as_float(v.x & 0xffff0000u);
  f[2] = __uint_as_float(v.y << 16);
  f[3] = __uint_as_float(v.y & 0xffff0000u);
}

// bf16(silu(x)) of a bf16 value x, as the reference's bf16 SiLU.
__device__ __forceinline__ float silu_bf16(float x) { return bf16_round(x / (1.f + expf(-x))); }

// Four floats rounded to bf16 and packed in a uint2 (one 8-byte store).
__device__ __forceinline__ uint2 pack4(const float (&f)[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(f[0], f[1]), hi = __floats2bfloat162_rn(f[2], f[3]);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

// N consecutive bf16 values (N = 2, 4 or 8: one 4-, 8- or 16-byte load) widened to float.
template <int N>
__device__ __forceinline__ void load_bf16(const __nv_bfloat16* p, float (&f)[N]) {
  if constexpr (N == 2) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(p);
    f[0] = __uint_as_float(w << 16);
    f[1] = __uint_as_float(w & 0xffff0000u);
  } else if constexpr (N == 4) {
    unpack4(*reinterpret_cast<const uint2*>(p), f);
  } else {
    static_assert(N == 8, "2, 4 or 8 values");
    unpack8(*reinterpret_cast<const uint4*>(p), f);
  }
}

}  // namespace adamk::thread
