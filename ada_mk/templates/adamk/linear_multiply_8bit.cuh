// adamk/linear_multiply_8bit.cuh: the multiply of a linear task whose weights stream as 8-bit
// codes with float32 scales (Tiling::Q8; block scope). As the bf16 multiply (adamk/linear_multiply.cuh)
// but over 64-column blocks and on f16 MMAs: a lane's 16-byte vector of codes holds its 8 columns of
// each of the block's two 32-column halves (docs/quantized-weights.md, "The packed chunk"), which
// decode8 turns into two f16 vectors (adamk/dequant.cuh), one MMA step each, against the f16
// activations these stages stage (adamk/activations.cuh, X_F16). With a scale per group
// (Tiling::GROUP) each step's product is scaled once (RowDot / TileDot add_scaled); with a scale
// per row, the row's sum is.
#pragma once
#include "adamk/dequant.cuh"
#include "adamk/linear_multiply.cuh"

namespace adamk::block {

#ifdef ADAMK_ABLATE_SCALES
constexpr bool ABLATE_SCALES = true;
#else
constexpr bool ABLATE_SCALES = false;
#endif

// The scales of chunk row r's two half-blocks of the 64-column block at column k (Tiling::GROUP >
// 0): adjacent floats with groups of 32 (one 8-byte load), else one scale for both halves.
template <class T>
__device__ __forceinline__ float2 block_scales(const float* scales, int r, int k) {
  static_assert(T::GROUP > 0, "a scale per group");
  const float* s = scales + r * T::SCALES + k / T::GROUP;
  if constexpr (T::GROUP == 32) {
    return *reinterpret_cast<const float2*>(s);
  } else {
    const float v = *s;
    return make_float2(v, v);
  }
}

// One row per warp group (batch 1): lane l of a warp takes the 16-byte code vectors v = l, l + 32,
// ... of its part of the row; vector v is block v / 4's columns 8 (v % 4) .. + 7 of each half.
template <class C, class T>
__device__ void multiply_rows_8bit(Ctx<C>& c, int row0) {
  constexpr int B = C::B, BP = (B + 1) / 2, VEC = T::KC / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int crow = warp / T::WPR, part = warp % T::WPR;  // this warp's row in a chunk, its K-part
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int ch = 0; ch < T::CHUNKS; ++ch) {
    const unsigned char* slot = reinterpret_cast<const unsigned char*>(c.ring.next());
    const unsigned char* w = slot + code_offset<C, T>(crow, 0);
    const float* scales = reinterpret_cast<const float*>(slot + T::CODE_BYTES);
    const int row = row0 + ch * T::CHUNK_ROWS + crow;
    warp::RowDot<warp::MmaF16> dot[BP];
#ifdef ADAMK_ABLATE_MATH
    if (false) {
#else
    if (row < T::N) {
#endif
#pragma unroll 2
      for (int v0 = part * 32; v0 < VEC; v0 += 32 * T::WPR) {
        const int v = v0 + lane, k = v / 4 * 64 + v % 4 * 8;  // the vector's first column (first half)
        const bool in = VEC % 32 == 0 || v < VEC;
        uint4 wa, wb;
        thread::decode8<T::FORMAT>(in ? *reinterpret_cast<const uint4*>(w + v * 16) : zero, wa, wb);
#pragma unroll
        for (int p = 0; p < BP; ++p) {
          const bool odd_in = 2 * p + 1 < B;
          const auto x = [&](int b, int col) {
            return in && (b == 2 * p || odd_in) ? *reinterpret_cast<const uint4*>(c.x + x_offset<C, T>(b, col)) : zero;
          };
          if constexpr (T::GROUP > 0 && !ABLATE_SCALES) {
            const float2 s = in ? block_scales<T>(scales, crow, k) : make_float2(0.f, 0.f);  // lanes past the row: none
            dot[p].add_scaled(wa, x(2 * p, k), x(2 * p + 1, k), s.x, 0);
            dot[p].add_scaled(wb, x(2 * p, k + 32), x(2 * p + 1, k + 32), s.y, 1);
          } else {
            dot[p].add(wa, x(2 * p, k), x(2 * p + 1, k));
            dot[p].add(wb, x(2 * p, k + 32), x(2 * p + 1, k + 32));
          }
        }
      }
    }
    const float row_scale = T::GROUP ? 1.f : scales[crow];
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const float acc = dot[b / 2].total(b & 1) * row_scale;
      if (lane == 0) c.red[((ch * T::CHUNK_ROWS + crow) * T::WPR + part) * B + b] = acc;
    }
  }
}

// Several sequences (Cfg::BATCHED): as multiply_batched, lane 4n + q taking code vector
// 4 * step + q of rows n and n + 8 (16 columns of one 64-column block), and its two halves'
// columns of sequence n's activations.
template <class C, class T>
__device__ void multiply_batched_8bit(Ctx<C>& c, int row0) {
  constexpr int B = C::B, R = T::CHUNK_ROWS, VEC = T::CHUNK_COLS / 16;
  static_assert(B <= 8 && R == 16, "one MMA holds 16 rows x 8 sequences");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = lane >> 2, q = lane & 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int g = 0; g < T::ROWS / R; ++g) {
    const bool lo_in = row0 + g * R + n < T::N, hi_in = row0 + g * R + n + 8 < T::N, seq_in = n < B;
    warp::TileDot<warp::MmaF16> dot;
    const float* scales = nullptr;
    for (int p = 0; p < T::KPARTS; ++p) {
      const unsigned char* slot = reinterpret_cast<const unsigned char*>(c.ring.next());
      scales = reinterpret_cast<const float*>(slot + T::CODE_BYTES);
      if (g > 0 && p == 0) sum_group<C, T>(c, g - 1);
#ifndef ADAMK_ABLATE_MATH
      // The lane's vectors lie 4 * WARPS vectors (whole 128-byte lines) apart: code_offset's
      // swizzle is the same for all of them, taken once.
      static_assert(4 * WARPS * 16 % 128 == 0, "a step of whole 128-byte lines");
      const unsigned char* w_lo = slot + code_offset<C, T>(n, (warp * 4 + q) * 16) - warp * 4 * 16;
      const unsigned char* w_hi = slot + code_offset<C, T>(n + 8, (warp * 4 + q) * 16) - warp * 4 * 16;
#pragma unroll 2
      for (int v0 = warp * 4; v0 < VEC; v0 += 4 * WARPS) {
        const int k = v0 / 4 * 64 + q * 8;  // the lane's first column in the chunk (first half)
        uint4 lo_a, lo_b, hi_a, hi_b;
        thread::decode8<T::FORMAT>(lo_in ? *reinterpret_cast<const uint4*>(w_lo + v0 * 16) : zero, lo_a, lo_b);
        thread::decode8<T::FORMAT>(hi_in ? *reinterpret_cast<const uint4*>(w_hi + v0 * 16) : zero, hi_a, hi_b);
        const __nv_bfloat16* xs = c.x + x_offset<C, T>(n, p * T::CHUNK_COLS + k);
        const uint4 xa = seq_in ? *reinterpret_cast<const uint4*>(xs) : zero;
        const uint4 xb = seq_in ? *reinterpret_cast<const uint4*>(xs + 32) : zero;
        if constexpr (T::GROUP > 0 && !ABLATE_SCALES) {
          const float2 s_lo = block_scales<T>(scales, n, k), s_hi = block_scales<T>(scales, n + 8, k);
          dot.add_scaled(lo_a, hi_a, xa, s_lo.x, s_hi.x, 0);
          dot.add_scaled(lo_b, hi_b, xb, s_lo.y, s_hi.y, 1);
        } else {
          dot.add(lo_a, hi_a, xa);
          dot.add(lo_b, hi_b, xb);
        }
      }
#endif
    }
    // A scale per row: every chunk of the row carries it; the group's last chunk is still in its slot.
    const float s_lo = T::GROUP ? 1.f : scales[n], s_hi = T::GROUP ? 1.f : scales[n + 8];
    float* part = c.red + T::ROWS * B + ((g & 1) * WARPS + warp) * R * B;
#pragma unroll
    for (int j = 0; j < 2; ++j)
      if (2 * q + j < B) {
        part[n * B + 2 * q + j] = dot.value(0, j) * s_lo;
        part[(n + 8) * B + 2 * q + j] = dot.value(1, j) * s_hi;
      }
  }
  __syncthreads();
  sum_group<C, T>(c, T::ROWS / R - 1);
}

}  // namespace adamk::block
