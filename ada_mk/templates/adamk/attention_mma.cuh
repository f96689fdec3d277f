// adamk/attention_mma.cuh: decode attention over blocks of 16 positions on the tensor cores
// (warp scope), for up to 8 query heads a group and heads of 64 or 128 dimensions.
#pragma once
#include <cute/arch/mma_sm80.hpp>
#include "adamk/bf16.cuh"
#include "adamk/tasks.cuh"

namespace adamk::block {

// Whether MmaAttention takes the heads of kernel C: up to 8 query heads a group (an MMA's 8
// columns), 64 or 128 dimensions.
template <class C>
constexpr bool MMA_ATTENTION = C::G <= 8 && C::HD % 64 == 0;

// A warp's positions on the tensor cores: blocks of 16 positions (from a ring slot, a
// shared-memory piece or straight from the cache), both products as m16n8k16 MMAs with the query
// heads as M (rows g + 8 and heads past G are zero), as flash-attention does: S = Q K^T over 8
// positions an n-tile, then O += P V with the rounded probabilities P as the A operand straight
// from S's accumulators (the same layout).
// Lane 4g + t: B column g of S is position 8 nt + g of the block, whose key row the lane reads
// as 16-byte vectors 4 q + t; the k order of S is that permutation of the dimensions, applied to
// the queries too. For O, lane 4g + t reads the value rows of positions 2t, 2t + 1, 2t + 8 and
// 2t + 9 (P's k) at vectors g + 8 h, and pairs one dimension of two positions per 32-bit word
// (byte_perm); n-tile j = 8 h + e of O is dimension 8 (n + 8 h) + e for column n.
// For these groups the lanes' loop (LaneAttention) is bound by its FMAs, the MMAs are not.
// See docs/experiments.md, "Attention on the tensor cores (MmaAttention)".
template <class C>
struct MmaAttention {
  static constexpr int HD = C::HD, G = C::G, KS = HD / 16, NT = HD / 8, HV = HD / 64;
  static_assert(MMA_ATTENTION<C>, "an MMA's 8 columns hold a group's query heads");
  using Mma = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  int g, t;
  uint32_t qa[KS][2];  // A fragments of the queries (head g; zero past G)
  float m = -INFINITY, l = 0.f;  // head g: the warp's running max, this lane's running sum
  float o[NT][2] = {};           // head g, n-tile j, columns 2t and 2t + 1

  __device__ explicit MmaAttention(const float* q) {
    const int lane = threadIdx.x & 31;
    g = lane >> 2;
    t = lane & 3;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int d = 8 * (4 * (ks / 2) + t) + 4 * (ks % 2);  // the dimensions of key words 2 (ks % 2), + 1
      qa[ks][0] = qa[ks][1] = 0u;
      if (g < G) {
        qa[ks][0] = thread::pack2(q[g * HD + d], q[g * HD + d + 1]);
        qa[ks][1] = thread::pack2(q[g * HD + d + 2], q[g * HD + d + 3]);
      }
    }
  }

  // Row of position p: this step's key / value (pos) from kn / vn, the others from the piece
  // (rows from `first`).
  __device__ static const __nv_bfloat16* row(const __nv_bfloat16* piece, const __nv_bfloat16* now, int p, int first,
                                             int pos) {
    return p == pos ? now : piece + static_cast<size_t>(p - first) * HD;
  }

  // The K and V rows of one block of 16 positions, as this lane reads them: key vectors 4 q + t of
  // positions 8 nt + g (kr[nt][q]) and value vectors g + 8 h of positions 2t + (r & 1) + 8 (r >> 1)
  // (vr[r][h]).
  struct Rows {
    uint4 kr[2][HD / 32];
    uint4 vr[4][HV];
  };

  // Load the rows of positions [pb, pb + 16): values from q1 on are zeros; keys from q1 on are
  // read only where GUARD is false (a piece's buffer holds them; their scores are masked out),
  // else zeros too (in the cache they may lie past its end).
  template <bool GUARD>
  __device__ void load(Rows& x, int pb, int q1, int pos, const __nv_bfloat16* k, const __nv_bfloat16* v, int first,
                       const __nv_bfloat16* kn, const __nv_bfloat16* vn) const {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int p = pb + 2 * t + (r & 1) + 8 * (r >> 1);
      const __nv_bfloat16* src = row(v, vn, p, first, pos);
#pragma unroll
      for (int h = 0; h < HV; ++h)
        x.vr[r][h] = p < q1 ? *reinterpret_cast<const uint4*>(src + 8 * (g + 8 * h)) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int p = pb + 8 * nt + g;
      const __nv_bfloat16* src = row(k, kn, p, first, pos);
#pragma unroll
      for (int q = 0; q < HD / 32; ++q)
        x.kr[nt][q] = !GUARD || p < q1 ? *reinterpret_cast<const uint4*>(src + 8 * (4 * q + t)) : make_uint4(0u, 0u, 0u, 0u);
    }
  }

  // Positions [pb, pb + 16) of a piece, those from q1 on masked out.
  __device__ void block(int pb, int q1, int pos, const __nv_bfloat16* k, const __nv_bfloat16* v, int first,
                        const __nv_bfloat16* kn, const __nv_bfloat16* vn) {
    Rows x;
    load<false>(x, pb, q1, pos, k, v, first, kn, vn);
    block(x, pb, q1);
  }

  // The block of positions [pb, pb + 16) whose rows x holds, those from q1 on masked out.
  __device__ void block(const Rows& x, int pb, int q1) {
    const auto& vr = x.vr;
    // S = Q K^T: two n-tiles of 8 positions, each over two accumulators (even and odd k-steps).
    float s[2][2][4] = {};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int q = 0; q < HD / 32; ++q) {
        const uint4 w = x.kr[nt][q];
        float(&a)[4] = s[nt][0];
        float(&b)[4] = s[nt][1];
        Mma::fma(a[0], a[1], a[2], a[3], qa[2 * q][0], 0u, qa[2 * q][1], 0u, w.x, w.y, a[0], a[1], a[2], a[3]);
        Mma::fma(b[0], b[1], b[2], b[3], qa[2 * q + 1][0], 0u, qa[2 * q + 1][1], 0u, w.z, w.w, b[0], b[1], b[2],
                 b[3]);
      }
    }
    // Softmax bookkeeping for head g: lane t holds positions 8 nt + 2t + e.
    float sc[2][2], mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool live = pb + 8 * nt + 2 * t + e < q1;
        sc[nt][e] = live ? (s[nt][0][e] + s[nt][1][e]) * C::ATTN_SCALE : -INFINITY;
        mx = fmaxf(mx, sc[nt][e]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m, mx);  // finite: the block's first position is live
    const float alpha = __expf(m - mn);
    m = mn;
    uint32_t pa[2];  // P, rounded to bf16 as the MMA takes it; the sum counts the rounded values
    l *= alpha;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      pa[nt] = thread::pack2(__expf(sc[nt][0] - mn), __expf(sc[nt][1] - mn));
      const float2 r = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pa[nt]));
      l += r.x + r.y;
    }
    // O += P V, n-tile j = 8 h + e: dimension 8 (g + 8 h) + e of positions 2t, 2t + 1 (b0) and
    // 2t + 8, 2t + 9 (b1), low or high halves of word e / 2.
#pragma unroll
    for (int h = 0; h < HV; ++h)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const unsigned sel = e % 2 ? 0x7632u : 0x5410u;
        const uint32_t b0 = __byte_perm(word(vr[0][h], e / 2), word(vr[1][h], e / 2), sel);
        const uint32_t b1 = __byte_perm(word(vr[2][h], e / 2), word(vr[3][h], e / 2), sel);
        float(&d)[2] = o[8 * h + e];
        float z0, z1;  // rows g + 8: zero queries, discarded
        Mma::fma(d[0], d[1], z0, z1, pa[0], 0u, pa[1], 0u, b0, b1, d[0] * alpha, d[1] * alpha, 0.f, 0.f);
      }
  }

  __device__ static uint32_t word(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
  }

  // This warp's running max, sum and output of head g into wm, wl ([WARPS][G]) and wo
  // ([WARPS][G][HD]). Column n of n-tile 8 h + e is dimension 8 (n + 8 h) + e.
  __device__ void finish(float* wm, float* wl, float* wo) {
    const int warp = threadIdx.x >> 5;
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (g >= G) return;
    if (t == 0) {
      wm[warp * G + g] = m;
      wl[warp * G + g] = l;
    }
#pragma unroll
    for (int h = 0; h < HV; ++h)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float4* dst = reinterpret_cast<float4*>(wo + (warp * G + g) * HD + 8 * (2 * t + c + 8 * h));
        dst[0] = make_float4(o[8 * h][c], o[8 * h + 1][c], o[8 * h + 2][c], o[8 * h + 3][c]);
        dst[1] = make_float4(o[8 * h + 4][c], o[8 * h + 5][c], o[8 * h + 6][c], o[8 * h + 7][c]);
      }
  }
};

}  // namespace adamk::block
