// adamk/bf16.cuh: bf16 <-> float (and f16), one value or several packed in 4 to 16 bytes (thread scope).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

namespace adamk::thread {

// Round to bf16 and back: reproduces the rounding a bf16 tensor applies at this point.
__device__ __forceinline__ float bf16_round(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
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

// Two floats rounded to bf16 and packed in a 32-bit word, lo in the low half.
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Four floats rounded to bf16 and packed in a uint2 (one 8-byte store).
__device__ __forceinline__ uint2 pack4(const float (&f)[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(f[0], f[1]), hi = __floats2bfloat162_rn(f[2], f[3]);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
}

// bf16(gamma * bf16(x * rstd)) for two bf16 values packed in a word, as HF's RMSNorm scales and
// weights them: the product of two bf16 values is exact in float, so one bf16x2 multiply rounds
// it as the reference's bf16 multiply does, in half the instructions of two float products.
__device__ __forceinline__ uint32_t rmsnorm2(uint32_t x, uint32_t gamma, float rstd) {
  const __nv_bfloat162 n = __floats2bfloat162_rn(__uint_as_float(x << 16) * rstd, __uint_as_float(x & 0xffff0000u) * rstd);
  const __nv_bfloat162 r = __hmul2(n, *reinterpret_cast<const __nv_bfloat162*>(&gamma));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// Two bf16 values packed in a word -> two f16 in a word: exact within f16's range, beyond it
// saturated to +-65504 (NaN stays NaN).
__device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t w) {
  uint32_t h;
  asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(h) : "f"(__uint_as_float(w & 0xffff0000u)), "f"(__uint_as_float(w << 16)));
  return h;
}

// W 32-bit words (2W consecutive bf16 values; W = 1, 2 or 4: one 4-, 8- or 16-byte load), raw.
template <int W>
__device__ __forceinline__ void load_words(const __nv_bfloat16* p, uint32_t (&w)[W]) {
  if constexpr (W == 1) {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (W == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x; w[1] = v.y;
  } else {
    static_assert(W == 4, "1, 2 or 4 words");
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
  }
}

// Those words widened to float.
template <int W>
__device__ __forceinline__ void unpack_words(const uint32_t (&w)[W], float (&f)[2 * W]) {
#pragma unroll
  for (int t = 0; t < W; ++t) {
    f[2 * t] = __uint_as_float(w[t] << 16);
    f[2 * t + 1] = __uint_as_float(w[t] & 0xffff0000u);
  }
}

}  // namespace adamk::thread
