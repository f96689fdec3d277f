// adamk/mma.cuh: dot products of weight rows with the staged activations on the tensor cores
// (warp scope), through CuTe's m16n8k16 bf16 MMA atom (sm_80 and later).
//
// A decode step multiplies each weight row by a handful of activation vectors, so an MMA tile
// of 8 output columns cannot be filled with 8 rows of one task. Instead each warp feeds one row
// as 8 columns: lane l holds 8 consecutive bf16 of the row (one 16-byte vector) and of each
// sequence's activations; the MMA's B operand takes the row's elements as column n = l / 4
// and its A operand the activations at the same positions as row n (sequence 2p) and row n + 8
// (sequence 2p + 1). The diagonal D[n][n] then holds a partial dot product over the elements of
// lanes 4n .. 4n + 3; the rest of D mixes columns and is discarded. One 16-byte vector feeds two
// MMAs (k 0-7 and 8-15 of each tile take elements 0-1 / 2-3 and 4-5 / 6-7 of every lane's
// vector), so the multiply needs no bf16 -> float conversion and no FMA loop.
//
// With several sequences (Cfg::BATCHED) that reads each sequence's activations once per weight
// row; TileDot instead multiplies 16 rows by 8 sequences in one MMA, so every activation load
// serves 16 rows.
#pragma once
#include <cute/arch/mma_sm80.hpp>
#include "adamk/warp.cuh"

namespace adamk::warp {

// The m16n8k16 MMAs (fp32 accumulators) the steps issue: bf16 operands, or f16 ones where 8-bit
// codes are multiplied (their conversion to f16 is one or two instructions per pair of codes,
// adamk/dequant.cuh; the staged activations are f16 for those stages, adamk/activations.cuh).
//
// 8-bit weights with a scale per group use add_scaled: the two MMAs of one 16-byte vector span 32
// columns of a row, one group's half-block, so their product, taken from zero, is scaled once and
// added to an accumulator: a multiply per product register, not per weight.
using MmaBf16 = cute::SM80_16x8x16_F32BF16BF16F32_TN;
using MmaF16 = cute::SM80_16x8x16_F32F16F16F32_TN;

// Accumulators of one pair of sequences: two MMA tiles (the halves of the 16-byte vectors).
template <class Mma = MmaBf16>
struct RowDot {
  float d[2][4] = {};

  // acc += this lane's 16 bytes of the row (w) times those of sequences 2p (x0) and 2p + 1 (x1).
  __device__ __forceinline__ void add(const uint4& w, const uint4& x0, const uint4& x1) {
    Mma::fma(d[0][0], d[0][1], d[0][2], d[0][3], x0.x, x1.x, x0.y, x1.y, w.x, w.y,
             d[0][0], d[0][1], d[0][2], d[0][3]);
    Mma::fma(d[1][0], d[1][1], d[1][2], d[1][3], x0.z, x1.z, x0.w, x1.w, w.z, w.w,
             d[1][0], d[1][1], d[1][2], d[1][3]);
  }

  // d[h] += s * (this step's product): the 32 columns of the lane's quad are one scale group.
  // The diagonal that total() reads lies in the quad whose scale the lane brings.
  __device__ __forceinline__ void add_scaled(const uint4& w, const uint4& x0, const uint4& x1, float s, int h) {
    float t[4];
    Mma::fma(t[0], t[1], t[2], t[3], x0.x, x1.x, x0.y, x1.y, w.x, w.y, 0.f, 0.f, 0.f, 0.f);
    Mma::fma(t[0], t[1], t[2], t[3], x0.z, x1.z, x0.w, x1.w, w.z, w.w, t[0], t[1], t[2], t[3]);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[h][i] = fmaf(s, t[i], d[h][i]);
  }

  // The full dot product for sequence 2p + odd, on every lane: the diagonal of D summed over
  // the warp. D's lane l holds columns 2(l % 4) and 2(l % 4) + 1 of rows l / 4 (c0, c1) and
  // l / 4 + 8 (c2, c3); the diagonal element of row l / 4 is in one of them for 8 lanes.
  __device__ __forceinline__ float total(int odd) const {
    const int lane = threadIdx.x & 31, n = lane >> 2, c = 2 * (lane & 3), r = 2 * odd;
    float s = 0.f;
    if (c == n) s = d[0][r] + d[1][r];
    if (c + 1 == n) s = d[0][r + 1] + d[1][r + 1];
    return sum(s);
  }
};

// 16 weight rows (the MMA's M: rows n and n + 8 of lane 4n + q) times up to 8 sequences (its N),
// 32 columns per call. Lane 4n + q brings the same 16-byte vector (columns 8j .. 8j + 7, j =
// 4 * step + q) of weight rows n and n + 8 and of sequence n's activations; as in RowDot, the
// MMA's k order is a permutation of those columns applied to both operands. Two accumulators,
// one per MMA, so consecutive MMAs do not wait on each other. Every lane's operands are real
// data: 512 bytes of weights per MMA.
template <class Mma = MmaBf16>
struct TileDot {
  float d[2][4] = {};

  __device__ __forceinline__ void add(const uint4& w_lo, const uint4& w_hi, const uint4& x) {
    Mma::fma(d[0][0], d[0][1], d[0][2], d[0][3], w_lo.x, w_hi.x, w_lo.y, w_hi.y, x.x, x.y,
             d[0][0], d[0][1], d[0][2], d[0][3]);
    Mma::fma(d[1][0], d[1][1], d[1][2], d[1][3], w_lo.z, w_hi.z, w_lo.w, w_hi.w, x.z, x.w,
             d[1][0], d[1][1], d[1][2], d[1][3]);
  }

  // d[h] += this step's product, rows n scaled by s_lo and n + 8 by s_hi: the step's 32 columns
  // are one scale group of each row.
  __device__ __forceinline__ void add_scaled(const uint4& w_lo, const uint4& w_hi, const uint4& x, float s_lo,
                                             float s_hi, int h) {
    float t[4];
    Mma::fma(t[0], t[1], t[2], t[3], w_lo.x, w_hi.x, w_lo.y, w_hi.y, x.x, x.y, 0.f, 0.f, 0.f, 0.f);
    Mma::fma(t[0], t[1], t[2], t[3], w_lo.z, w_hi.z, w_lo.w, w_hi.w, x.z, x.w, t[0], t[1], t[2], t[3]);
    d[h][0] = fmaf(s_lo, t[0], d[h][0]);
    d[h][1] = fmaf(s_lo, t[1], d[h][1]);
    d[h][2] = fmaf(s_hi, t[2], d[h][2]);
    d[h][3] = fmaf(s_hi, t[3], d[h][3]);
  }

  // Lane 4n + q holds rows n (hi = 0) and n + 8 (hi = 1) times sequences 2q (j = 0) and 2q + 1.
  __device__ __forceinline__ float value(int hi, int j) const { return d[0][2 * hi + j] + d[1][2 * hi + j]; }
};

}  // namespace adamk::warp
