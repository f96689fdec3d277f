// adamk/dequant.cuh: quantized weight codes to 16-bit floats in registers (thread scope).
//
// 8-bit: a 16-byte vector of codes holds a lane's 16 columns of one 64-column block: bytes 0-7 its
// columns of the block's first 32-column half, bytes 8-15 those of the second (the packed chunk,
// docs/quantized-weights.md). decode8 turns it into two f16 vectors, one per half, the operands
// of two RowDot / TileDot steps on f16 MMAs (adamk/mma.cuh), exactly: every FP8 E4M3 value and
// every int8 is an f16. The scales are not applied here: the multiply applies each one once, to
// the MMA products of its group (or row).
//
// 4-bit: an 8-byte vector holds the same 16 columns, a 32-bit word per half. decode4 turns it into
// two bf16 vectors with each half's (scale, offset) applied: bf16(q * scale + offset).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include "adamk/tasks.cuh"

namespace adamk::thread {

// Four FP8 E4M3 codes -> four f16 (two f16x2 words), by the hardware's conversion (sm_89 and
// later): one instruction per pair of codes.
__device__ __forceinline__ uint2 fp8x4_to_f16(uint32_t codes) {
  uint2 out;
  asm("{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\t"
      "cvt.rn.f16x2.e4m3x2 %0, lo;\n\tcvt.rn.f16x2.e4m3x2 %1, hi;\n\t}"
      : "=r"(out.x), "=r"(out.y) : "r"(codes));
  return out;
}

// Four int8 codes (stored as value + 128) -> four f16. Each code becomes the low byte of the f16
// 1024 + code (0x64 in the high byte: exponent 10, so the 10 mantissa bits count ones); one f16x2
// subtraction of 1152 per pair leaves the value, exactly.
__device__ __forceinline__ uint2 int8x4_to_f16(uint32_t codes) {
  const __half2 bias = __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480));  // 1152
  const uint32_t lo = __byte_perm(codes, 0x64646464u, 0x4140), hi = __byte_perm(codes, 0x64646464u, 0x4342);
  const __half2 a = __hsub2(*reinterpret_cast<const __half2*>(&lo), bias);
  const __half2 b = __hsub2(*reinterpret_cast<const __half2*>(&hi), bias);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

// A lane's 16 codes of a 64-column block -> its 8 columns of the first half (a) and of the
// second half (b), f16.
template <int FORMAT>
__device__ __forceinline__ void decode8(const uint4& codes, uint4& a, uint4& b) {
  static_assert(FORMAT == FP8 || FORMAT == INT8, "8-bit codes");
#ifdef ADAMK_ABLATE_DECODE
  a = b = codes;
  return;
#endif
  const auto cvt = [](uint32_t w) { return FORMAT == FP8 ? fp8x4_to_f16(w) : int8x4_to_f16(w); };
  const uint2 a0 = cvt(codes.x), a1 = cvt(codes.y), b0 = cvt(codes.z), b1 = cvt(codes.w);
  a = make_uint4(a0.x, a0.y, a1.x, a1.y);
  b = make_uint4(b0.x, b0.y, b1.x, b1.y);
}

// Eight 4-bit codes -> eight bf16 weights q * scale + offset (four bf16x2 words, the word order of a
// bf16 vector). Nibble i of the word is column 2i, nibble 4 + i column 2i + 1, so one mask of the
// word shifted by 4i puts columns 2i and 2i + 1 in the low 4 bits of its two halves; OR-ed into
// bf16 128.0 (0x4300: exponent 7, so the 7 mantissa bits count ones) each half is 128 + q exactly.
// One bf16x2 subtraction of 128 leaves q (exact), one bf16x2 fma applies the group's scale and
// offset, rounded once. Per 8 weights: 3 shifts, 4 mask-ORs (one lop3 each), 4 subtractions, 4 fmas.
__device__ __forceinline__ uint4 int4x8_to_bf16(uint32_t codes, __nv_bfloat162 scale, __nv_bfloat162 offset) {
  const __nv_bfloat162 k128 = __halves2bfloat162(__ushort_as_bfloat16(0x4300), __ushort_as_bfloat16(0x4300));
  uint32_t out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t biased = ((codes >> (4 * i)) & 0x000F000Fu) | 0x43004300u;  // 128 + q of columns 2i, 2i + 1
    const __nv_bfloat162 q = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&biased), k128);
    const __nv_bfloat162 w = __hfma2(q, scale, offset);
    out[i] = *reinterpret_cast<const uint32_t*>(&w);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// A (scale, offset) pair as the chunk stores it (scale's bf16 bits low, offset's high) -> each
// splat across a bf16x2.
__device__ __forceinline__ void int4_pair(uint32_t pair, __nv_bfloat162& scale, __nv_bfloat162& offset) {
  const uint32_t s = __byte_perm(pair, 0u, 0x1010), o = __byte_perm(pair, 0u, 0x3232);
  scale = *reinterpret_cast<const __nv_bfloat162*>(&s);
  offset = *reinterpret_cast<const __nv_bfloat162*>(&o);
}

// A lane's 16 codes of a 64-column block (its 8 columns of each half) and the (scale, offset) pairs
// of the halves' groups -> its 8 weights of the first half (a) and of the second (b), bf16.
__device__ __forceinline__ void decode4(const uint2& codes, uint32_t pair_a, uint32_t pair_b, uint4& a, uint4& b) {
  __nv_bfloat162 s, o;
  int4_pair(pair_a, s, o);
  a = int4x8_to_bf16(codes.x, s, o);
  int4_pair(pair_b, s, o);
  b = int4x8_to_bf16(codes.y, s, o);
}

}  // namespace adamk::thread
