// adamk/linear_multiply_4bit.cuh: the multiply of a linear task whose weights stream as 4-bit codes
// with a bf16 (scale, offset) pair per group (Tiling::Q4; block scope). The lane-to-column map of the
// 8-bit multiply (adamk/linear_multiply_8bit.cuh) over 64-column blocks, with an 8-byte code vector
// where that has a 16-byte one: a lane's 8 columns of each of the block's two 32-column halves
// (docs/quantized-weights.md, "The packed chunk"). decode4 (adamk/dequant.cuh) makes them the two
// bf16 vectors of the bf16 multiply with each half's scale and offset already applied, so the MMA
// steps are the bf16 multiply's (RowDot / TileDot add) and nothing is scaled after them.
#pragma once
#include "adamk/dequant.cuh"
#include "adamk/linear_multiply.cuh"

namespace adamk::block {

// The (scale, offset) pair of chunk row r's columns [k, k + 32) (a group's half-block).
template <class T>
__device__ __forceinline__ uint32_t group_pair(const uint32_t* pairs, int r, int k) {
  return pairs[r * T::SCALES + k / T::GROUP];
}

// One row per warp group (batch 1): lane l of a warp takes the 8-byte code vectors v = l, l + 32,
// ... of its part of the row; vector v is block v / 4's columns 8 (v % 4) .. + 7 of each half.
template <class C, class T>
__device__ void multiply_rows_4bit(Ctx<C>& c, int row0) {
  constexpr int B = C::B, BP = (B + 1) / 2, VEC = T::KC / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int crow = warp / T::WPR, part = warp % T::WPR;  // this warp's row in a chunk, its K-part
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int ch = 0; ch < T::CHUNKS; ++ch) {
    const unsigned char* slot = reinterpret_cast<const unsigned char*>(c.ring.next());
    const unsigned char* w = slot + nibble_offset<C, T>(crow, 0);
    const uint32_t* pairs = reinterpret_cast<const uint32_t*>(slot + T::CODE_BYTES);
    const int row = row0 + ch * T::CHUNK_ROWS + crow;
    warp::RowDot<> dot[BP];
#ifdef ADAMK_ABLATE_MATH
    if (false) {
#else
    if (row < T::N) {
#endif
#pragma unroll 2
      for (int v0 = part * 32; v0 < VEC; v0 += 32 * T::WPR) {
        const int v = v0 + lane, k = v / 4 * 64 + v % 4 * 8;  // the vector's first column (first half)
        const bool in = VEC % 32 == 0 || v < VEC;
        uint4 wa, wb;  // lanes past the row: codes, scales and offsets 0, so weights 0
        thread::decode4(in ? *reinterpret_cast<const uint2*>(w + v * 8) : make_uint2(0u, 0u),
                        in ? group_pair<T>(pairs, crow, k) : 0u, in ? group_pair<T>(pairs, crow, k + 32) : 0u, wa, wb);
#pragma unroll
        for (int p = 0; p < BP; ++p) {
          const bool odd_in = 2 * p + 1 < B;
          const auto x = [&](int b, int col) {
            return in && (b == 2 * p || odd_in) ? *reinterpret_cast<const uint4*>(c.x + x_offset<C, T>(b, col)) : zero;
          };
          dot[p].add(wa, x(2 * p, k), x(2 * p + 1, k));
          dot[p].add(wb, x(2 * p, k + 32), x(2 * p + 1, k + 32));
        }
      }
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const float acc = dot[b / 2].total(b & 1);
      if (lane == 0) c.red[((ch * T::CHUNK_ROWS + crow) * T::WPR + part) * B + b] = acc;
    }
  }
}

// Several sequences (Cfg::BATCHED): as multiply_batched_8bit, lane 4n + q taking code vector
// 4 * step + q of rows n and n + 8 (16 columns of one 64-column block), and its two halves'
// columns of sequence n's activations.
template <class C, class T>
__device__ void multiply_batched_4bit(Ctx<C>& c, int row0) {
  constexpr int B = C::B, R = T::CHUNK_ROWS, VEC = T::CHUNK_COLS / 16;
  static_assert(B <= 8 && R == 16, "one MMA holds 16 rows x 8 sequences");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = lane >> 2, q = lane & 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int g = 0; g < T::ROWS / R; ++g) {
    const bool lo_in = row0 + g * R + n < T::N, hi_in = row0 + g * R + n + 8 < T::N, seq_in = n < B;
    warp::TileDot<> dot;
    for (int p = 0; p < T::KPARTS; ++p) {
      const unsigned char* slot = reinterpret_cast<const unsigned char*>(c.ring.next());
      if (g > 0 && p == 0) sum_group<C, T>(c, g - 1);
#ifndef ADAMK_ABLATE_MATH
      const uint32_t* pairs = reinterpret_cast<const uint32_t*>(slot + T::CODE_BYTES);
      // The lane's vectors lie 4 * WARPS vectors (whole 128-byte lines) apart: nibble_offset's
      // swizzle is the same for all of them, taken once.
      static_assert(4 * WARPS * 8 % 128 == 0, "a step of whole 128-byte lines");
      const unsigned char* w_lo = slot + nibble_offset<C, T>(n, (warp * 4 + q) * 8) - warp * 4 * 8;
      const unsigned char* w_hi = slot + nibble_offset<C, T>(n + 8, (warp * 4 + q) * 8) - warp * 4 * 8;
#pragma unroll 2
      for (int v0 = warp * 4; v0 < VEC; v0 += 4 * WARPS) {
        const int k = v0 / 4 * 64 + q * 8;  // the lane's first column in the chunk (first half)
        uint4 lo_a, lo_b, hi_a, hi_b;  // padding rows: codes, scales and offsets 0, so weights 0
        thread::decode4(lo_in ? *reinterpret_cast<const uint2*>(w_lo + v0 * 8) : make_uint2(0u, 0u),
                        group_pair<T>(pairs, n, k), group_pair<T>(pairs, n, k + 32), lo_a, lo_b);
        thread::decode4(hi_in ? *reinterpret_cast<const uint2*>(w_hi + v0 * 8) : make_uint2(0u, 0u),
                        group_pair<T>(pairs, n + 8, k), group_pair<T>(pairs, n + 8, k + 32), hi_a, hi_b);
        const __nv_bfloat16* xs = c.x + x_offset<C, T>(n, p * T::CHUNK_COLS + k);
        const uint4 xa = seq_in ? *reinterpret_cast<const uint4*>(xs) : zero;
        const uint4 xb = seq_in ? *reinterpret_cast<const uint4*>(xs + 32) : zero;
        dot.add(lo_a, hi_a, xa);
        dot.add(lo_b, hi_b, xb);
      }
#endif
    }
    float* part = c.red + T::ROWS * B + ((g & 1) * WARPS + warp) * R * B;
#pragma unroll
    for (int j = 0; j < 2; ++j)
      if (2 * q + j < B) {
        part[n * B + 2 * q + j] = dot.value(0, j);
        part[(n + 8) * B + 2 * q + j] = dot.value(1, j);
      }
  }
  __syncthreads();
  sum_group<C, T>(c, T::ROWS / R - 1);
}

}  // namespace adamk::block
