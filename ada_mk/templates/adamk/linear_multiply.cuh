// adamk/linear_multiply.cuh: the multiply of a linear task with bf16 weights (block scope): its
// weight tile, which arrives through the stream ring one chunk at a time, times the staged
// activation chunk, on the tensor cores; the warps' partial sums land in red (Ctx::red).
#pragma once
#include "adamk/context.cuh"
#include "adamk/mma.cuh"

namespace adamk::block {

// The finished dot product of the task's row r with sequence b: the sum of its warps' parts in
// red (one part after the batched multiply's sum_group).
template <class C, class T>
__device__ float row_sum(const Ctx<C>& c, int r, int b) {
  constexpr int PARTS = C::BATCHED ? 1 : T::WPR;
  float v = 0.f;
  for (int p = 0; p < PARTS; ++p) v += c.red[(r * PARTS + p) * C::B + b];
  return v;
}

// One row per warp group (batch 1): each row of a chunk is reduced by WPR warps, lane by lane
// over 16-byte vectors (warp::RowDot); red[row][part][b] gets each warp's partial sum.
template <class C, class T>
__device__ void multiply_rows(Ctx<C>& c, int row0) {
  constexpr int B = C::B;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int crow = warp / T::WPR, part = warp % T::WPR;  // this warp's row in a chunk, its K-part
  for (int ch = 0; ch < T::CHUNKS; ++ch) {
    const __nv_bfloat16* w = c.ring.next() + crow * T::KC;
    const int row = row0 + ch * T::CHUNK_ROWS + crow;
    // Tensor cores (adamk/mma.cuh): the warp's 32 lanes take 32 consecutive 16-byte vectors of
    // the row per step, and every lane takes part in each MMA (lanes past the row feed zeros).
    constexpr int BP = (B + 1) / 2;  // sequence pairs: one MMA operand A each
    warp::RowDot<> dot[BP];
#ifdef ADAMK_ABLATE_MATH
    if (false) {
#else
    if (row < T::N) {
#endif
      const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll 2
      for (int v0 = part * 32; v0 < T::VEC; v0 += 32 * T::WPR) {
        const int v = v0 + lane;
        const bool in = T::VEC % 32 == 0 || v < T::VEC;
        const uint4 wv = in ? *reinterpret_cast<const uint4*>(w + v * 8) : zero;
#pragma unroll
        for (int p = 0; p < BP; ++p) {
          const uint4 x0 = in ? *reinterpret_cast<const uint4*>(c.x + x_offset<C, T>(2 * p, v * 8)) : zero;
          const uint4 x1 = in && 2 * p + 1 < B ? *reinterpret_cast<const uint4*>(c.x + x_offset<C, T>(2 * p + 1, v * 8)) : zero;
          dot[p].add(wv, x0, x1);
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

// Row group g (CHUNK_ROWS rows) of the batched multiply is done by every warp: sum its 8 warps'
// partials, in a fixed order, into red[row][b].
template <class C, class T>
__device__ void sum_group(Ctx<C>& c, int g) {
  constexpr int B = C::B, R = T::CHUNK_ROWS;
  static_assert(R * B <= C::THREADS, "a thread per (row, sequence) of the group");
  const float* part = c.red + T::ROWS * B + (g & 1) * WARPS * R * B;
  const int e = threadIdx.x;
  if (e < R * B) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += part[w * R * B + e];
    c.red[g * R * B + e] = v;
  }
}

// Several sequences (Cfg::BATCHED): a row group of 16 rows arrives in KPARTS chunks of CHUNK_COLS
// columns. The 8 warps split each chunk's columns, each multiplying the group's 16 rows by all
// sequences on the tensor cores (warp::TileDot) and accumulating over the group's chunks in
// registers, so each activation load serves 16 rows and each MMA 512 bytes of weights. A group's
// per-warp partials go to one of two buffers behind red's [ROWS][B] results; they are summed at
// the next group's first chunk, after the ring's barrier.
template <class C, class T>
__device__ void multiply_batched(Ctx<C>& c, int row0) {
  constexpr int B = C::B, R = T::CHUNK_ROWS;
  static_assert(B <= 8 && R == 16, "one MMA holds 16 rows x 8 sequences");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = lane >> 2, q = lane & 3;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int g = 0; g < T::ROWS / R; ++g) {
    // Lane 4n + q loads weight rows n and n + 8 and sequence n; rows past the matrix and
    // sequences past the batch feed zeros.
    const bool lo_in = row0 + g * R + n < T::N, hi_in = row0 + g * R + n + 8 < T::N, seq_in = n < B;
    warp::TileDot<> dot;
    for (int p = 0; p < T::KPARTS; ++p) {
      const __nv_bfloat16* w = c.ring.next();
      if (g > 0 && p == 0) sum_group<C, T>(c, g - 1);
#ifndef ADAMK_ABLATE_MATH
      // The lane's vectors lie 4 * WARPS vectors (whole 128-byte lines) apart: tile_offset's
      // swizzle is the same for all of them, taken once.
      static_assert(4 * WARPS * 8 % 64 == 0, "a step of whole 128-byte lines");
      const __nv_bfloat16* w_lo = w + tile_offset<C, T>(n, (warp * 4 + q) * 8) - warp * 4 * 8;
      const __nv_bfloat16* w_hi = w + tile_offset<C, T>(n + 8, (warp * 4 + q) * 8) - warp * 4 * 8;
#pragma unroll 4
      for (int v0 = warp * 4; v0 < T::CHUNK_VEC; v0 += 4 * WARPS) {
        const int k = (v0 + q) * 8;
        const bool in = T::CHUNK_VEC % 4 == 0 || k < T::CHUNK_COLS;
        const uint4 wl = lo_in && in ? *reinterpret_cast<const uint4*>(w_lo + v0 * 8) : zero;
        const uint4 wh = hi_in && in ? *reinterpret_cast<const uint4*>(w_hi + v0 * 8) : zero;
        const uint4 xv =
            seq_in && in ? *reinterpret_cast<const uint4*>(c.x + x_offset<C, T>(n, p * T::CHUNK_COLS + k)) : zero;
        dot.add(wl, wh, xv);
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
