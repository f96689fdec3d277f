// adamk/attention_paths.cuh: the ways through an attention split's positions (block scope), one
// function each, and the choice among them (attend).
//
// Every way reads the roped queries and this step's key and value from the attention scratch
// (AttnTask: q, kn, vn) and the split's cached K/V rows, reads each K and V row with 16-byte loads,
// updates the softmax's running max and sum once per block of positions, not once per position,
// and leaves, for each warp, its running max, sum and unnormalised output in wm, wl and wo for the
// task to combine. They differ in where the rows come from and which units multiply them:
//
//   way               rows from                          multiply         kernels (Cfg)
//   RING_MMA          the stream ring's slots            tensor cores     KV_RING (Hopper)
//   PIECES_MMA        shared-memory pieces (bulk copy)   tensor cores     ATTN_BUFS > 0, MMA_ATTENTION
//   CACHE_MMA         the cache, into registers          tensor cores     ATTN_BUFS == 0, MMA_ATTENTION
//   PIECES_LANES      shared-memory pieces (bulk copy)   lanes' FMAs      ATTN_BUFS > 0, other groups
//   CACHE_LANES_128   the cache, into registers          lanes' FMAs      128-dimension heads, other groups
//   CACHE_LANES       the cache, into registers          lanes' FMAs      the rest
//
// See docs/experiments.md, "Attention's ways through a split".
#pragma once
#include <type_traits>
#include "adamk/attention_kv.cuh"
#include "adamk/attention_lanes.cuh"
#include "adamk/attention_mma.cuh"
#include "adamk/warp.cuh"

namespace adamk::block {

// An attention task as its threads see it: its split (AttnSplit: b, g, j, pos, p0, p1, kc, vc),
// the thread's warp and lane, and the attention scratch (shared memory, Ctx::attn): the roped
// queries, the warps' running max, sum and output, and this step's key (roped) and value.
template <class C>
struct AttnTask : AttnSplit<C> {
  static constexpr int HD = C::HD, G = C::G;
  int warp, lane;
  float* q;            // [G][HD] roped queries
  float* wm;           // [WARPS][G] running max per warp
  float* wl;           // [WARPS][G] running sum
  float* wo;           // [WARPS][G][HD] running output
  __nv_bfloat16* kn;   // [HD] the new key, roped
  __nv_bfloat16* vn;   // [HD] the new value

  __device__ __forceinline__ AttnTask(const Ctx<C>& c, int layer, int idx)
      : AttnSplit<C>(c.a, layer, idx), warp(threadIdx.x >> 5), lane(threadIdx.x & 31), q(c.attn),
        wm(q + G * HD), wl(wm + WARPS * G), wo(wl + WARPS * G),
        kn(reinterpret_cast<__nv_bfloat16*>(wo + WARPS * G * HD)), vn(kn + HD) {}

  // A lane loop's result: lane 0 of each warp writes the warp's running max and sum.
  __device__ __forceinline__ void put_stats(const float (&m)[G], const float (&l)[G]) const {
#pragma unroll
    for (int h = 0; h < G; ++h)
      if (lane == 0) { wm[warp * G + h] = m[h]; wl[warp * G + h] = l[h]; }
  }
};

enum class AttnWay { RING_MMA, PIECES_MMA, CACHE_MMA, PIECES_LANES, CACHE_LANES_128, CACHE_LANES };

// The way kernel C takes (the plan decides KV_RING and ATTN_BUFS; the heads decide the rest).
template <class C>
constexpr AttnWay ATTN_WAY = C::KV_RING                           ? AttnWay::RING_MMA
                             : C::ATTN_BUFS > 0 && MMA_ATTENTION<C> ? AttnWay::PIECES_MMA
                             : MMA_ATTENTION<C>                   ? AttnWay::CACHE_MMA
                             : C::ATTN_BUFS > 0                   ? AttnWay::PIECES_LANES
                             : C::HD == 128                       ? AttnWay::CACHE_LANES_128
                                                                  : AttnWay::CACHE_LANES;

// RING_MMA. Reads: KV_SLOTS ring slots of KV_PIECE positions (K rows, then V rows), which the
// ring fetched tasks ahead (StreamRing::load_kv_chunk). Waits for: each slot (StreamRing::next,
// whose barrier also orders the slot's reuse). Blocks of 16 positions go to the warps in turn
// across slots.
template <class C>
__device__ __forceinline__ void attend_ring_mma(Ctx<C>& c, const AttnTask<C>& t, MmaAttention<C>& ma) {
  constexpr int HD = C::HD, P = C::KV_PIECE, BPP = P / 16;
  static_assert(P % 16 == 0 && BPP <= WARPS, "pieces of whole 16-position blocks, a warp each");
  const int warp = t.warp;
  for (int i = 0; i < C::KV_SLOTS; ++i) {
    const __nv_bfloat16* kb = c.ring.next();
    const int first = t.p0 + i * P, q1 = min(t.p1, first + P);
    const int blk = ((warp - i * BPP) % WARPS + WARPS) % WARPS;  // this warp's block of the slot, if < BPP
    if (blk < BPP && first + 16 * blk < q1)
      ma.block(first + 16 * blk, q1, t.pos, kb, kb + P * HD, first, t.kn, t.vn);
  }
  ma.finish(t.wm, t.wl, t.wo);
}

// PIECES_MMA. Reads: the split's pieces in the K/V buffers (attention_kv.cuh), the first
// ATTN_BUFS of them copied before the task waited (prefetch_kv). Waits for: each piece's mbarrier.
// Blocks of 16 positions go to the warps in turn across pieces; the next copy into a buffer goes
// out once every warp is done with it.
template <class C>
__device__ __forceinline__ void attend_pieces_mma(Ctx<C>& c, const AttnTask<C>& t, MmaAttention<C>& ma) {
  constexpr int HD = C::HD, P = C::ATTN_PIECE, NB = C::ATTN_BUFS, BPP = P / 16;
  static_assert(P % 16 == 0 && P / 16 <= WARPS, "pieces of whole 16-position blocks, a warp each");
  const int warp = t.warp;
  const int pieces = kv_pieces(t);
  for (int i = 0; i < pieces; ++i) {
    const int slot = i % NB, first = t.p0 + i * P, q1 = min(t.p1, first + P);
    const int blk = ((warp - i * BPP) % WARPS + WARPS) % WARPS;  // this warp's block of the piece, if < BPP
    if (blk < BPP && first + 16 * blk < q1) {
      thread::mbar_wait(c.kv_bars + slot, (c.kv_phase >> slot) & 1u);
      const __nv_bfloat16* kb = kv_buffer(c, i);
      ma.block(first + 16 * blk, q1, t.pos, kb, kb + P * HD, first, t.kn, t.vn);
    }
    c.kv_phase ^= 1u << slot;
    if (i + NB < pieces) {
      __syncthreads();  // every warp is done with this buffer
      if (threadIdx.x == 0) copy_kv_piece(c, t, i + NB);
    }
  }
  ma.finish(t.wm, t.wl, t.wo);
}

// CACHE_MMA with 64-dimension heads: block i of the split to warp i % WARPS, straight from the
// cache; each warp loads its next block's rows before it multiplies this block's, so two blocks'
// loads are in flight a warp.
template <class C>
__device__ __forceinline__ void cache_mma_two_deep(MmaAttention<C>& ma, const AttnTask<C>& t) {
  using MA = MmaAttention<C>;
  const int warp = t.warp;
  typename MA::Rows cur, next;
  int pb = t.p0 + 16 * warp;
  if (pb < t.p1) ma.template load<true>(cur, pb, t.p1, t.pos, t.kc, t.vc, 0, t.kn, t.vn);
  for (; pb < t.p1; pb += 16 * WARPS) {
    if (pb + 16 * WARPS < t.p1) ma.template load<true>(next, pb + 16 * WARPS, t.p1, t.pos, t.kc, t.vc, 0, t.kn, t.vn);
    ma.block(cur, pb, t.p1);
    cur = next;
  }
}

// CACHE_MMA with 128-dimension heads: the same, one block's rows at a time (two blocks' rows
// would not fit the registers without spilling).
template <class C>
__device__ __forceinline__ void cache_mma_one_deep(MmaAttention<C>& ma, const AttnTask<C>& t) {
  using MA = MmaAttention<C>;
  const int warp = t.warp;
  for (int pb = t.p0 + 16 * warp; pb < t.p1; pb += 16 * WARPS) {
    typename MA::Rows x;
    ma.template load<true>(x, pb, t.p1, t.pos, t.kc, t.vc, 0, t.kn, t.vn);
    ma.block(x, pb, t.p1);
  }
}

// CACHE_MMA. Reads: the split's rows straight from the cache (one sequence). Waits for: nothing
// (the rows before pos were written by earlier steps). Head sizes: 64 (two blocks in flight a
// warp) or 128 (one).
template <class C>
__device__ __forceinline__ void attend_cache_mma(const AttnTask<C>& t, MmaAttention<C>& ma) {
  if constexpr (C::HD == 64) cache_mma_two_deep<C>(ma, t);
  else cache_mma_one_deep<C>(ma, t);
  ma.finish(t.wm, t.wl, t.wo);
}

// PIECES_LANES. Reads and waits for the pieces as PIECES_MMA does; one batch of rows a warp per
// piece (LaneAttention).
template <class C>
__device__ __forceinline__ void attend_pieces_lanes(Ctx<C>& c, const AttnTask<C>& t, LaneAttention<C>& la) {
  constexpr int HD = C::HD, P = C::ATTN_PIECE, NB = C::ATTN_BUFS;
  using LA = LaneAttention<C>;
  constexpr int U = LA::rows_for(P);
  const int pieces = kv_pieces(t);
  for (int i = 0; i < pieces; ++i) {
    const int slot = i % NB, first = t.p0 + i * P;
    thread::mbar_wait(c.kv_bars + slot, (c.kv_phase >> slot) & 1u);
    c.kv_phase ^= 1u << slot;
    const __nv_bfloat16* kb = kv_buffer(c, i);
    la.template attend<U>(t.q, first, min(t.p1, first + P), t.pos, kb, kb + P * HD, first, t.kn, t.vn);
    if (i + NB < pieces) {
      __syncthreads();  // every warp is done with this buffer
      if (threadIdx.x == 0) copy_kv_piece(c, t, i + NB);
    }
  }
  la.finish(t.wo);
  t.put_stats(la.m, la.l);
}

// CACHE_LANES_128. Reads: the split's rows straight from the cache. Waits for: nothing.
// Each warp takes blocks of PB = 16 positions, block slot i the position pb + warp + WARPS * i.
// A key row is dotted by lanes i and i + 16 (64 dimensions each) with every query head: no
// reduction across the warp per position. The warp updates the running max and sum once per
// block, then multiplies the block's values in, lane by lane over its DPL dimensions. Every K
// and V load of a block goes out before any is used: one round trip per block.
template <class C>
__device__ __forceinline__ void attend_cache_lanes_128(const AttnTask<C>& t, Lane128State<C>& st) {
  constexpr int HD = C::HD, G = C::G, DPL = HD / 32;
  constexpr int PB = 16;           // positions a block: two lanes a position
  constexpr int WORDS = DPL / 2;   // 32-bit words of a value row per lane
  const int warp = t.warp, lane = t.lane;
  const int p1 = t.p1, pos = t.pos;
  const __nv_bfloat16* kc = t.kc;
  const __nv_bfloat16* vc = t.vc;
  const float* q = t.q;
  float(&m)[G] = st.m;
  float(&l)[G] = st.l;
  float(&o)[G][DPL] = st.o;
  const int slot = lane % PB, r = lane / PB;
  for (int pb = t.p0; pb + warp < p1; pb += WARPS * PB) {
    const int p = pb + warp + WARPS * slot;
    const bool live = p < p1;
    const int nlive = min(PB, (p1 - pb - warp + WARPS - 1) / WARPS);  // the same for the whole warp
    uint4 kr[8];  // dimensions 64 r .. 64 r + 63 of the key
    if (live) {
      const uint4* src = reinterpret_cast<const uint4*>((p == pos ? t.kn : kc + static_cast<size_t>(p) * HD) + 64 * r);
#pragma unroll
      for (int v = 0; v < 8; ++v) kr[v] = src[v];
    }
    uint32_t vr[PB][WORDS];
#pragma unroll
    for (int u = 0; u < PB; ++u) {
      const int pu = pb + warp + WARPS * u;
      if (u < nlive)
        thread::load_words<WORDS>(pu == pos ? t.vn + lane * DPL : vc + static_cast<size_t>(pu) * HD + lane * DPL, vr[u]);
    }
    float sc[G];
#pragma unroll
    for (int h = 0; h < G; ++h) sc[h] = 0.f;
#pragma unroll
    for (int v = 0; v < 8; ++v) {
      float kf[8];
      thread::unpack4(reinterpret_cast<const uint2*>(&kr[v])[0], reinterpret_cast<float(&)[4]>(kf[0]));
      thread::unpack4(reinterpret_cast<const uint2*>(&kr[v])[1], reinterpret_cast<float(&)[4]>(kf[4]));
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float4 q0 = *reinterpret_cast<const float4*>(q + h * HD + 64 * r + v * 8);
        const float4 q1 = *reinterpret_cast<const float4*>(q + h * HD + 64 * r + v * 8 + 4);
        sc[h] = fmaf(q0.x, kf[0], fmaf(q0.y, kf[1], fmaf(q0.z, kf[2], fmaf(q0.w, kf[3], sc[h]))));
        sc[h] = fmaf(q1.x, kf[4], fmaf(q1.y, kf[5], fmaf(q1.z, kf[6], fmaf(q1.w, kf[7], sc[h]))));
      }
    }
    float pe[G];
#pragma unroll
    for (int h = 0; h < G; ++h) {
      sc[h] += __shfl_xor_sync(0xffffffffu, sc[h], 16);  // the other half of the key
      const float sv = live ? sc[h] * C::ATTN_SCALE : -INFINITY;
      const float mn = fmaxf(m[h], warp::max(sv));  // finite: slot 0 is live
      const float alpha = __expf(m[h] - mn);
      pe[h] = live ? __expf(sv - mn) : 0.f;
      l[h] = l[h] * alpha + warp::sum(r == 0 ? pe[h] : 0.f);  // each position once
#pragma unroll
      for (int i = 0; i < DPL; ++i) o[h][i] *= alpha;
      m[h] = mn;
    }
#pragma unroll
    for (int u = 0; u < PB; ++u) {
      if (u >= nlive) break;  // the same for the whole warp
      float vf[DPL];
      thread::unpack_words<WORDS>(vr[u], vf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float w = __shfl_sync(0xffffffffu, pe[h], u);
#pragma unroll
        for (int i = 0; i < DPL; ++i) o[h][i] = fmaf(w, vf[i], o[h][i]);
      }
    }
  }
#pragma unroll
  for (int h = 0; h < G; ++h)
#pragma unroll
    for (int i = 0; i < DPL; ++i) t.wo[(warp * G + h) * HD + lane * DPL + i] = o[h][i];
  t.put_stats(m, l);
}

// CACHE_LANES: the other head sizes, and 64-dimension heads in groups of more than 8 query heads.
// Reads: the split's rows straight from the cache into registers, U = 8 rows a batch (64 KB in
// flight per block) for up to 4 query heads a group, else 2. Waits for: nothing.
template <class C>
__device__ __forceinline__ void attend_cache_lanes(const AttnTask<C>& t, LaneAttention<C>& la) {
  using LA = LaneAttention<C>;
  la.template attend<LA::QREG ? 8 : 2>(t.q, t.p0, t.p1, t.pos, t.kc, t.vc, 0, t.kn, t.vn);
  la.finish(t.wo);
  t.put_stats(la.m, la.l);
}

// The running state a way keeps in registers: MmaAttention, LaneAttention or Lane128State.
template <class C>
using AttnEngine =
    std::conditional_t<ATTN_WAY<C> == AttnWay::RING_MMA || ATTN_WAY<C> == AttnWay::PIECES_MMA ||
                           ATTN_WAY<C> == AttnWay::CACHE_MMA,
                       MmaAttention<C>,
                       std::conditional_t<ATTN_WAY<C> == AttnWay::CACHE_LANES_128, Lane128State<C>, LaneAttention<C>>>;

// The split's positions, the way kernel C takes (ATTN_WAY), with the running state e (AttnEngine,
// constructed by the caller from the roped queries t.q). The caller keeps e in its own frame: built
// inside a way's function, the same instructions come out with their registers numbered in
// another order, and ptxas then allocates them differently.
template <class C>
__device__ __forceinline__ void attend(Ctx<C>& c, const AttnTask<C>& t, AttnEngine<C>& e) {
  constexpr AttnWay WAY = ATTN_WAY<C>;
  if constexpr (WAY == AttnWay::RING_MMA) attend_ring_mma<C>(c, t, e);
  else if constexpr (WAY == AttnWay::PIECES_MMA) attend_pieces_mma<C>(c, t, e);
  else if constexpr (WAY == AttnWay::CACHE_MMA) attend_cache_mma<C>(t, e);
  else if constexpr (WAY == AttnWay::PIECES_LANES) attend_pieces_lanes<C>(c, t, e);
  else if constexpr (WAY == AttnWay::CACHE_LANES_128) attend_cache_lanes_128<C>(t, e);
  else attend_cache_lanes<C>(t, e);
}

}  // namespace adamk::block
