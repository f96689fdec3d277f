// adamk/attention_lanes.cuh: decode attention over a range of positions on the lanes' FMA units
// (warp scope): the loop for groups and head sizes that MmaAttention does not take.
#pragma once
#include "adamk/bf16.cuh"
#include "adamk/tasks.cuh"

namespace adamk::block {

// Eight dimensions a lane: LP = HD / 8 lanes a position, each with one 16-byte vector of the key
// row and one of the value row, so one load instruction of a warp covers PR = 32 / LP consecutive
// positions (a row). A warp takes rows of PR positions, row u of a batch at pb + WARPS * PR * u,
// and issues the K and V loads of U rows before using any. Scores are reduced over the LP lanes
// of a position; the running max is the warp's, updated once per batch; the running sum and
// output stay per lane (the lanes' positions) until finish() sums them.
template <class C>
struct LaneAttention {
  static constexpr int HD = C::HD, G = C::G, LP = HD / 8, PR = 32 / LP;
  // Registers: U x G scores, G x 8 outputs and, for up to 4 query heads a group, the lane's 8
  // dimensions of every query (more heads read them from shared memory at each use).
  static constexpr bool QREG = G <= 4;
  int s, t;  // this lane's position in a row, its 8 dimensions
  float m[G], l[G], o8[G][8], qr[QREG ? G : 1][8];

  // Rows a batch that give each warp one batch of `positions` (1 to 8).
  __host__ __device__ static constexpr int rows_for(int positions) {
    return positions < WARPS * PR ? 1 : (positions > 8 * WARPS * PR ? 8 : positions / (WARPS * PR));
  }

  __device__ explicit LaneAttention(const float* q) {
    const int lane = threadIdx.x & 31;
    s = lane / LP;
    t = lane % LP;
#pragma unroll
    for (int h = 0; h < G; ++h) {
      m[h] = -INFINITY;
      l[h] = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) o8[h][i] = 0.f;
    }
    if constexpr (QREG)
#pragma unroll
      for (int h = 0; h < G; ++h)
#pragma unroll
        for (int i = 0; i < 8; ++i) qr[h][i] = q[h * HD + 8 * t + i];
  }

  // Positions [q0, q1) with U rows a batch; the key and value rows of position p at
  // k + (p - first) * HD and v + (p - first) * HD, those of position pos (this step's) at kn, vn.
  template <int U>
  __device__ void attend(const float* q, int q0, int q1, int pos, const __nv_bfloat16* k, const __nv_bfloat16* v,
                         int first, const __nv_bfloat16* kn, const __nv_bfloat16* vn) {
    const int warp = threadIdx.x >> 5;
    for (int pb = q0 + warp * PR; pb < q1; pb += WARPS * PR * U) {
      const int rows = min(U, (q1 - pb + WARPS * PR - 1) / (WARPS * PR));  // the same for the whole warp
      uint4 kr[U], vr[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= rows) break;
        const int p = pb + WARPS * PR * u + s;
        kr[u] = vr[u] = make_uint4(0u, 0u, 0u, 0u);  // past the split: zeros (never NaN) times 0
        if (p < q1) {
          const size_t row = static_cast<size_t>(p - first) * HD + 8 * t;
          kr[u] = *reinterpret_cast<const uint4*>(p == pos ? kn + 8 * t : k + row);
          vr[u] = *reinterpret_cast<const uint4*>(p == pos ? vn + 8 * t : v + row);
        }
      }
      float sc[U][G];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= rows) break;
        float kf[8];
        thread::unpack_words<4>(reinterpret_cast<const uint32_t(&)[4]>(kr[u]), kf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float d = 0.f;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            float qv;
            if constexpr (QREG) qv = qr[h][i];
            else qv = q[h * HD + 8 * t + i];
            d = fmaf(qv, kf[i], d);
          }
#pragma unroll
          for (int x = LP / 2; x > 0; x >>= 1) d += __shfl_xor_sync(0xffffffffu, d, x);
          sc[u][h] = pb + WARPS * PR * u + s < q1 ? d * C::ATTN_SCALE : -INFINITY;
        }
      }
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float mx = sc[0][h];
#pragma unroll
        for (int u = 1; u < U; ++u)
          if (u < rows) mx = fmaxf(mx, sc[u][h]);
#pragma unroll
        for (int x = LP; x < 32; x <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, x));
        const float mn = fmaxf(m[h], mx);  // finite: the batch's first position is live
        const float alpha = __expf(m[h] - mn);
        l[h] *= alpha;
#pragma unroll
        for (int i = 0; i < 8; ++i) o8[h][i] *= alpha;
        m[h] = mn;
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u >= rows) break;
        float vf[8];
        thread::unpack_words<4>(reinterpret_cast<const uint32_t(&)[4]>(vr[u]), vf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          const float pe = __expf(sc[u][h] - m[h]);  // 0 past the split
          l[h] += pe;
#pragma unroll
          for (int i = 0; i < 8; ++i) o8[h][i] = fmaf(pe, vf[i], o8[h][i]);
        }
      }
    }
  }

  // Sum the warp's PR position slots (lanes t, t + LP, ... hold the same dimensions) and write
  // the warp's running output to wo ([WARPS][G][HD]).
  __device__ void finish(float* wo) {
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
      for (int x = LP; x < 32; x <<= 1) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], x);
#pragma unroll
        for (int i = 0; i < 8; ++i) o8[h][i] += __shfl_xor_sync(0xffffffffu, o8[h][i], x);
      }
      if (s == 0) {
        float4* dst = reinterpret_cast<float4*>(wo + (warp * G + h) * HD + 8 * t);
        dst[0] = make_float4(o8[h][0], o8[h][1], o8[h][2], o8[h][3]);
        dst[1] = make_float4(o8[h][4], o8[h][5], o8[h][6], o8[h][7]);
      }
    }
  }
};

// The running state of the lanes' loop for 128-dimension heads (attention_paths.cuh,
// attend_cache_lanes_128): per query head the warp's running max, the lane's running sum and its
// DPL = 4 dimensions of the output.
template <class C>
struct Lane128State {
  static constexpr int G = C::G, DPL = C::HD / 32;
  float m[G], l[G], o[G][DPL];

  __device__ explicit Lane128State(const float*) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      m[h] = -INFINITY;
      l[h] = 0.f;
#pragma unroll
      for (int i = 0; i < DPL; ++i) o[h][i] = 0.f;
    }
  }
};

}  // namespace adamk::block
