// adamk/attention.cuh: one task of decode attention (block scope).
//
// A task covers one sequence b, one K/V head g with the G query heads that share it (GQA: the
// K/V bytes are read once for all of them) and split j of the positions 0..pos (flash-decoding).
// It applies RoPE to q and to the new k, appends the new k and v to the cache when position pos
// falls in its split, and writes an unnormalised partial result with its running max and sum.
// The last of a group's splits to finish combines them into the bf16 attention output that the
// O projection multiplies, and only then publishes the group (all its splits' counts at once).
// On Hopper, for heads MmaAttention takes (Cfg::KV_RING: one sequence, or 64-dimension heads),
// the split's cached K and V rows come through the weight ring, which fetched them tasks ahead,
// and the tensor cores multiply them in the ring's slots (MmaAttention). With several sequences
// otherwise on Hopper (Cfg::ATTN_BUFS > 0) the task copies its rows to shared memory by bulk
// copies issued before it waits for its inputs. Elsewhere the lanes load the rows into registers,
// and for heads of 64 or 128 dimensions the tensor cores multiply them there.
#pragma once
#include <cute/arch/mma_sm80.hpp>
#include "adamk/bf16.cuh"
#include "adamk/context.cuh"
#include "adamk/warp.cuh"

namespace adamk::block {

// q/k/v values of columns cols[i] (where live[i]) for sequence b: the sums of the QKV stage's
// K-split partials, rounded to bf16 as the reference's projection output is. Each partial comes
// with its step's epoch in one 8-byte word (thread::st_flagged), which the task polls
// (thread::poll_flagged).
template <class C, int N>
__device__ void qkv_values(const Ctx<C>& c, int layer, int idx, int b, const int (&cols)[N], const bool (&live)[N],
                           float (&out)[N]) {
  constexpr int KS = C::Qkv::KSPLIT;
  const unsigned long long* part =
      reinterpret_cast<const unsigned long long*>(c.scratch(C::Scratch::QKV_PART, layer)) + b * C::NQKV;
  bool on[N * KS];
#pragma unroll
  for (int i = 0; i < N * KS; ++i) on[i] = live[i / KS];
  float v[N * KS];
  thread::poll_flagged<N * KS>([&](int i) { return part + i % KS * C::B * C::NQKV + cols[i / KS]; }, on, c.a.epoch,
                               v, WaitSite{c.a.debug, ATTN, layer, idx}, -1);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < KS; ++k) s += v[i * KS + k];
    out[i] = thread::bf16_round(s);
  }
}

// Flash-decoding's reduction for sequence b and the G query heads of K/V head g: out =
// sum_j o_j e^(m_j - M) / sum_j l_j e^(m_j - M) over the splits j, rounded to bf16 (the
// reference's attention output is a bf16 tensor). Every load is issued before any is used.
// Where the partials are polled (Cfg::ATTN_POLLED) they are 8-byte words {value, step}: the
// threads poll every split's (m, l) into ml ([G][NS][2], shared memory) and their own
// dimensions' outputs at once, then meet at a barrier.
template <class C>
__device__ void combine_splits(Ctx<C>& c, int layer, int idx, int b, int g, float* ml_s) {
  constexpr int NS = C::ATTN_SPLITS, HD = C::HD, G = C::G;
  __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(c.scratch_w(C::Scratch::ATTN_OUT, layer)) + b * C::Q + g * G * HD;
  const size_t first = (static_cast<size_t>(b) * C::NH + g * G) * NS;  // split 0 of query head g * G
  if constexpr (C::ATTN_POLLED) {
    constexpr int E = G * HD, EPT = (E + C::THREADS - 1) / C::THREADS;  // output elements, a thread's
    constexpr int ML = G * NS * 2, MPT = (ML + C::THREADS - 1) / C::THREADS;  // (m, l) words, a thread's
    const auto* o = reinterpret_cast<const unsigned long long*>(c.scratch(C::Scratch::ATTN_O, layer)) + first * HD;
    const auto* ml = reinterpret_cast<const unsigned long long*>(c.scratch(C::Scratch::ATTN_ML, layer)) + first * 2;
    // Word i < EPT * NS: split i % NS of element threadIdx.x + (i / NS) * THREADS; then (m, l) words.
    const auto at = [&](int i) {
      if (i < EPT * NS) {
        const int e = threadIdx.x + i / NS * C::THREADS;
        return o + (e / HD * NS + i % NS) * HD + e % HD;
      }
      return ml + threadIdx.x + (i - EPT * NS) * C::THREADS;
    };
    bool live[EPT * NS + MPT];
    float v[EPT * NS + MPT];
#pragma unroll
    for (int i = 0; i < EPT * NS; ++i) live[i] = threadIdx.x + i / NS * C::THREADS < E;
#pragma unroll
    for (int i = 0; i < MPT; ++i) live[EPT * NS + i] = threadIdx.x + i * C::THREADS < ML;
    thread::poll_flagged<EPT * NS + MPT>(at, live, c.a.epoch, v, WaitSite{c.a.debug, ATTN, layer, idx}, -2);
#pragma unroll
    for (int i = 0; i < MPT; ++i)
      if (live[EPT * NS + i]) ml_s[threadIdx.x + i * C::THREADS] = v[EPT * NS + i];
    __syncthreads();
#pragma unroll
    for (int it = 0; it < EPT; ++it) {
      const int e = threadIdx.x + it * C::THREADS;
      if (e >= E) break;
      const float* mh = ml_s + e / HD * NS * 2;  // head e / HD: (m, l) of each split
      float M = -INFINITY, den = 0.f, x = 0.f;
#pragma unroll
      for (int j = 0; j < NS; ++j) M = fmaxf(M, mh[2 * j]);  // split 0 is never empty: M is finite
#pragma unroll
      for (int j = 0; j < NS; ++j) den += mh[2 * j + 1] * __expf(mh[2 * j] - M);
#pragma unroll
      for (int j = 0; j < NS; ++j) x += __expf(mh[2 * j] - M) / den * v[it * NS + j];
      out[e] = __float2bfloat16_rn(x);
    }
  } else {
    const float* o = c.scratch(C::Scratch::ATTN_O, layer);
    const float* ml = c.scratch(C::Scratch::ATTN_ML, layer);
    for (int e = 2 * threadIdx.x; e < G * HD; e += 2 * C::THREADS) {  // two dimensions per thread
      const size_t slot = first + e / HD * NS;
      float2 part[NS], mj[NS];
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        part[j] = __ldcg(reinterpret_cast<const float2*>(o + (slot + j) * HD + e % HD));
        mj[j] = __ldcg(reinterpret_cast<const float2*>(ml + (slot + j) * 2));
      }
      float M = -INFINITY, den = 0.f, x = 0.f, y = 0.f;
#pragma unroll
      for (int j = 0; j < NS; ++j) M = fmaxf(M, mj[j].x);  // split 0 is never empty: M is finite
#pragma unroll
      for (int j = 0; j < NS; ++j) den += mj[j].y * __expf(mj[j].x - M);
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        const float w = __expf(mj[j].x - M) / den;
        x += w * part[j].x;
        y += w * part[j].y;
      }
      *reinterpret_cast<__nv_bfloat162*>(out + e) = __floats2bfloat162_rn(x, y);
    }
  }
}

// Batched attention on Hopper (Cfg::ATTN_BUFS > 0): piece i of a split, ATTN_PIECE positions
// from p0 + i * ATTN_PIECE, comes by bulk copy into buffer i % ATTN_BUFS, its K rows then its V
// rows. The buffers lie in the staged activations' and the reductions' regions (x, red), which
// attention does not otherwise use (ada_mk.search.plan.Plan.kv_pieces).
template <class C>
__device__ __nv_bfloat16* kv_buffer(const Ctx<C>& c, int i) {
  return c.x + (i % C::ATTN_BUFS) * 2 * C::ATTN_PIECE * C::HD;
}

template <class C>
__device__ int kv_pieces(const AttnSplit<C>& s) {
  return max(0, (s.p1 - s.p0 + C::ATTN_PIECE - 1) / C::ATTN_PIECE);
}

// Thread 0: copy piece i of the split; it completes on its buffer's mbarrier.
template <class C>
__device__ void copy_kv_piece(const Ctx<C>& c, const AttnSplit<C>& s, int i) {
  constexpr int P = C::ATTN_PIECE, HD = C::HD;
  const int first = s.p0 + i * P, bytes = min(P, s.p1 - first) * HD * 2;
  __nv_bfloat16* dst = kv_buffer(c, i);
  uint64_t* bar = c.kv_bars + i % C::ATTN_BUFS;
  thread::mbar_expect(bar, 2 * bytes);
  thread::bulk_copy(dst, s.kc + static_cast<size_t>(first) * HD, bytes, bar);
  thread::bulk_copy(dst + P * HD, s.vc + static_cast<size_t>(first) * HD, bytes, bar);
}

// Before an attention task waits for its inputs: the copies of its first ATTN_BUFS pieces; returns
// how many it started (none without ATTN_BUFS). The rows of positions before pos were written by
// earlier steps (pos itself, stale there, is read from shared memory): nothing of this step
// orders them.
template <class C>
__device__ int prefetch_kv(Ctx<C>& c, int layer, int idx) {
  if constexpr (C::ATTN_BUFS > 0) {
    const AttnSplit<C> s(c.a, layer, idx);
    const int n = min(C::ATTN_BUFS, kv_pieces(s));
    __syncthreads();  // the previous task is done with x and red
    c.staged = -1;    // x is about to hold K/V rows
    if (threadIdx.x == 0) {
      thread::fence_shared_for_bulk();
      for (int i = 0; i < n; ++i) copy_kv_piece(c, s, i);
    }
    return n;
  }
  return 0;
}

// A debug build that gives up waiting leaves the kernel: first let the n prefetched pieces land.
template <class C>
__device__ void drain_kv(Ctx<C>& c, int n) {
  for (int i = 0; i < n; ++i) thread::mbar_wait(c.kv_bars + i, (c.kv_phase >> i) & 1u);
}

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

// Batched attention on the tensor cores (warp scope): for up to 8 query heads a group and heads
// of 64 or 128 dimensions, a warp takes blocks of 16 positions from the shared-memory pieces and
// runs both products as m16n8k16 MMAs with the query heads as M (rows g + 8 and heads past G are
// zero), as flash-attention does: S = Q K^T over 8 positions an n-tile, then O += P V with the
// rounded probabilities P as the A operand straight from S's accumulators (the same layout).
// Lane 4g + t: B column g of S is position 8 nt + g of the block, whose key row the lane reads
// as 16-byte vectors 4 q + t; the k order of S is that permutation of the dimensions, applied to
// the queries too. For O, lane 4g + t reads the value rows of positions 2t, 2t + 1, 2t + 8 and
// 2t + 9 (P's k) at vectors g + 8 h, and pairs one dimension of two positions per 32-bit word
// (byte_perm); n-tile j = 8 h + e of O is dimension 8 (n + 8 h) + e for column n.
// It replaced the lanes' loop (LaneAttention) for these groups: that loop was compute-bound
// (about 10 of a Llama-3-8B batch-8 task's 14 us); at batch 8 on an H200 the step went from
// 1.137 to 1.099 ms (Llama-3.2-1B) and from 5.443 to 5.321 ms (Llama-3-8B; session 13).
template <class C>
struct MmaAttention {
  static constexpr int HD = C::HD, G = C::G, KS = HD / 16, NT = HD / 8, HV = HD / 64;
  static_assert(G <= 8 && HD % 64 == 0, "an MMA's 8 columns hold a group's query heads");
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

template <class C>
__device__ void attention_task(Ctx<C>& c, int layer, int idx) {
  constexpr int HD = C::HD, G = C::G, NS = C::ATTN_SPLITS, DPL = HD / 32, HALF = HD / 2;
  constexpr bool MMA = C::ATTN_BUFS > 0 && G <= 8 && HD % 64 == 0;                   // MmaAttention on pieces
  constexpr bool MMA1 = !C::KV_RING && C::ATTN_BUFS == 0 && G <= 8 && HD % 64 == 0;  // ... on the cache
  const AttnSplit<C> split(c.a, layer, idx);
  const int j = split.j, g = split.g, b = split.b, pos = split.pos, p0 = split.p0, p1 = split.p1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __nv_bfloat16* kc = split.kc;
  __nv_bfloat16* vc = split.vc;

  float* q = c.attn;            // [G][HD] roped queries
  float* wm = q + G * HD;       // [WARPS][G] running max per warp
  float* wl = wm + WARPS * G;   // [WARPS][G] running sum
  float* wo = wl + WARPS * G;   // [WARPS][G][HD] running output
  __nv_bfloat16* kn = reinterpret_cast<__nv_bfloat16*>(wo + WARPS * G * HD);  // [HD] the new key, roped
  __nv_bfloat16* vn = kn + HD;  // [HD] the new value

  // RoPE, rotate-half convention, with bf16 rounding where the reference rounds:
  // x * cos + rotate_half(x) * sin, cos and sin of pos * inv_freq cast to bf16. The thread's q/k/v
  // values: both halves of its IT rotation pairs, then its dimension of v (qkv_values).
  constexpr int NR = (G + 1) * HALF, IT = (NR + C::THREADS - 1) / C::THREADS;
  static_assert(HD <= C::THREADS, "a thread per dimension of v");
  int cols[2 * IT + 1];
  bool live[2 * IT + 1];
  float x[2 * IT + 1];
#pragma unroll
  for (int it = 0; it < IT; ++it) {
    const int e = threadIdx.x + it * C::THREADS, hh = e / HALF, d = e % HALF;
    cols[2 * it] = hh < G ? (g * G + hh) * HD + d : C::Q + g * HD + d;
    cols[2 * it + 1] = cols[2 * it] + HALF;
    live[2 * it] = live[2 * it + 1] = e < NR;
  }
  cols[2 * IT] = C::Q + C::KVD + g * HD + threadIdx.x;
  live[2 * IT] = threadIdx.x < HD;
  qkv_values<C>(c, layer, idx, b, cols, live, x);
  const float xv = x[2 * IT];
#pragma unroll
  for (int it = 0; it < IT; ++it) {
    const float x1 = x[2 * it], x2 = x[2 * it + 1];
    const int e = threadIdx.x + it * C::THREADS, hh = e / HALF, d = e % HALF;
    if (e >= NR) continue;
    const float ang = static_cast<float>(pos) * C::inv_freq(d);
    const float cs = thread::bf16_round(cosf(ang)), sn = thread::bf16_round(sinf(ang));
    const float lo = thread::bf16_round(thread::bf16_round(x1 * cs) - thread::bf16_round(x2 * sn));
    const float hi = thread::bf16_round(thread::bf16_round(x2 * cs) + thread::bf16_round(x1 * sn));
    if (hh < G) {
      q[hh * HD + d] = lo;
      q[hh * HD + d + HALF] = hi;
    } else {
      kn[d] = __float2bfloat16_rn(lo);  // exact: already rounded
      kn[d + HALF] = __float2bfloat16_rn(hi);
    }
  }
  if (threadIdx.x < HD) vn[threadIdx.x] = __float2bfloat16_rn(xv);
  __syncthreads();
#ifdef ADAMK_PROFILE
  c.t_staged = global_ns();
#endif

  // Six ways through the split's positions (benchmarks/RESULTS.md, sessions 6, 7, 10, 13, 18, 19,
  // 21): the tensor cores on the ring's slots (KV_RING), on shared-memory pieces (several
  // sequences, Hopper), the lanes' loop on pieces (the same, for groups MmaAttention does not
  // take), the tensor cores on rows loaded straight from the cache (one sequence, heads of 64 or
  // 128 dimensions), and two register loops (the others). All read every K and V row with 16-byte
  // loads and update the softmax's running max and sum once per block of positions, not once per
  // position.
  float m[G], l[G];  // per query head, lane loops: the warp's running max, the lane's running sum
  if constexpr (C::KV_RING) {
    // The split's rows from the weight ring (Cfg::KV_RING), which fetched them tasks ahead:
    // KV_SLOTS slots of KV_PIECE positions, blocks of 16 positions dealt to the warps in turn
    // across slots; the ring's barrier orders each slot's reuse.
    constexpr int P = C::KV_PIECE, BPP = P / 16;
    static_assert(P % 16 == 0 && BPP <= WARPS, "pieces of whole 16-position blocks, a warp each");
    MmaAttention<C> ma(q);
    for (int i = 0; i < C::KV_SLOTS; ++i) {
      const __nv_bfloat16* kb = c.ring.next();
      const int first = p0 + i * P, q1 = min(p1, first + P);
      const int blk = ((warp - i * BPP) % WARPS + WARPS) % WARPS;  // this warp's block of the slot, if < BPP
      if (blk < BPP && first + 16 * blk < q1)
        ma.block(first + 16 * blk, q1, pos, kb, kb + P * HD, first, kn, vn);
    }
    ma.finish(wm, wl, wo);
  } else if constexpr (MMA) {
    // Several sequences: the rows from the shared-memory pieces (prefetch_kv), blocks of 16
    // positions dealt to the warps in turn across pieces; the next copy into a buffer goes out
    // once every warp is done with it.
    constexpr int P = C::ATTN_PIECE, NB = C::ATTN_BUFS, BPP = P / 16;
    static_assert(P % 16 == 0 && P / 16 <= WARPS, "pieces of whole 16-position blocks, a warp each");
    MmaAttention<C> ma(q);
    const int pieces = kv_pieces(split);
    for (int i = 0; i < pieces; ++i) {
      const int slot = i % NB, first = p0 + i * P, q1 = min(p1, first + P);
      const int blk = ((warp - i * BPP) % WARPS + WARPS) % WARPS;  // this warp's block of the piece, if < BPP
      if (blk < BPP && first + 16 * blk < q1) {
        thread::mbar_wait(c.kv_bars + slot, (c.kv_phase >> slot) & 1u);
        const __nv_bfloat16* kb = kv_buffer(c, i);
        ma.block(first + 16 * blk, q1, pos, kb, kb + P * HD, first, kn, vn);
      }
      c.kv_phase ^= 1u << slot;
      if (i + NB < pieces) {
        __syncthreads();  // every warp is done with this buffer
        if (threadIdx.x == 0) copy_kv_piece(c, split, i + NB);
      }
    }
    ma.finish(wm, wl, wo);
  } else if constexpr (MMA1) {
    // One sequence: blocks of 16 positions straight from the cache, block i of the split to warp
    // i % WARPS; each warp loads its next block's rows before it multiplies this block's, so two
    // blocks' loads are in flight a warp. Against the lanes' loop below (U = 8) on an H200,
    // Llama-3.2-1B's step went from 0.820 to 0.797 ms at context 512 and from 0.895 to 0.846 at
    // 4,096 (session 18). Heads of 128 dimensions load one block's rows at a time: two blocks'
    // rows there made ptxas spill (Llama-3-8B); against the lanes' loop, Llama-3-8B went from
    // 3.931 to 3.903 ms at context 512 and from 4.221 to 4.071 at 4,096 (H200, session 19).
    using MA = MmaAttention<C>;
    MA ma(q);
    if constexpr (HD == 64) {
      typename MA::Rows cur, next;
      int pb = p0 + 16 * warp;
      if (pb < p1) ma.template load<true>(cur, pb, p1, pos, kc, vc, 0, kn, vn);
      for (; pb < p1; pb += 16 * WARPS) {
        if (pb + 16 * WARPS < p1) ma.template load<true>(next, pb + 16 * WARPS, p1, pos, kc, vc, 0, kn, vn);
        ma.block(cur, pb, p1);
        cur = next;
      }
    } else {  // 128 dimensions: one block's rows at a time (two spilled)
      for (int pb = p0 + 16 * warp; pb < p1; pb += 16 * WARPS) {
        typename MA::Rows x;
        ma.template load<true>(x, pb, p1, pos, kc, vc, 0, kn, vn);
        ma.block(x, pb, p1);
      }
    }
    ma.finish(wm, wl, wo);
  } else if constexpr (C::ATTN_BUFS > 0) {
    // Several sequences: the rows from the shared-memory pieces (prefetch_kv), one batch of rows
    // a warp per piece; the next copy into a buffer goes out once every warp is done with it.
    constexpr int P = C::ATTN_PIECE, NB = C::ATTN_BUFS;
    using LA = LaneAttention<C>;
    constexpr int U = LA::rows_for(P);
    LA la(q);
    const int pieces = kv_pieces(split);
    for (int i = 0; i < pieces; ++i) {
      const int slot = i % NB, first = p0 + i * P;
      thread::mbar_wait(c.kv_bars + slot, (c.kv_phase >> slot) & 1u);
      c.kv_phase ^= 1u << slot;
      const __nv_bfloat16* kb = kv_buffer(c, i);
      la.template attend<U>(q, first, min(p1, first + P), pos, kb, kb + P * HD, first, kn, vn);
      if (i + NB < pieces) {
        __syncthreads();  // every warp is done with this buffer
        if (threadIdx.x == 0) copy_kv_piece(c, split, i + NB);
      }
    }
    la.finish(wo);
#pragma unroll
    for (int h = 0; h < G; ++h) { m[h] = la.m[h]; l[h] = la.l[h]; }
  } else if constexpr (HD == 128) {
    float o[G][DPL];
#pragma unroll
    for (int h = 0; h < G; ++h) {
      m[h] = -INFINITY;
      l[h] = 0.f;
#pragma unroll
      for (int t = 0; t < DPL; ++t) o[h][t] = 0.f;
    }
    // Each warp takes blocks of PB = 16 positions, block slot i the position pb + warp + WARPS * i.
    // A key row is dotted by lanes i and i + 16 (64 dimensions each) with every query head: no
    // reduction across the warp per position. The warp updates the running max and sum once per
    // block, then multiplies the block's values in, lane by lane over its DPL dimensions. Every K
    // and V load of a block goes out before any is used: one round trip per block.
    constexpr int PB = 16;  // positions a block: two lanes a position
    constexpr int W = DPL / 2;  // 32-bit words of a value row per lane
    const int slot = lane % PB, r = lane / PB;
    for (int pb = p0; pb + warp < p1; pb += WARPS * PB) {
      const int p = pb + warp + WARPS * slot;
      const bool live = p < p1;
      const int nlive = min(PB, (p1 - pb - warp + WARPS - 1) / WARPS);  // the same for the whole warp
      uint4 kr[8];  // dimensions 64 r .. 64 r + 63 of the key
      if (live) {
        const uint4* src = reinterpret_cast<const uint4*>((p == pos ? kn : kc + static_cast<size_t>(p) * HD) + 64 * r);
#pragma unroll
        for (int v = 0; v < 8; ++v) kr[v] = src[v];
      }
      uint32_t vr[PB][W];
#pragma unroll
      for (int u = 0; u < PB; ++u) {
        const int pu = pb + warp + WARPS * u;
        if (u < nlive) thread::load_words<W>(pu == pos ? vn + lane * DPL : vc + static_cast<size_t>(pu) * HD + lane * DPL, vr[u]);
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
        const float s = live ? sc[h] * C::ATTN_SCALE : -INFINITY;
        const float mn = fmaxf(m[h], warp::max(s));  // finite: slot 0 is live
        const float alpha = __expf(m[h] - mn);
        pe[h] = live ? __expf(s - mn) : 0.f;
        l[h] = l[h] * alpha + warp::sum(r == 0 ? pe[h] : 0.f);  // each position once
#pragma unroll
        for (int t = 0; t < DPL; ++t) o[h][t] *= alpha;
        m[h] = mn;
      }
#pragma unroll
      for (int u = 0; u < PB; ++u) {
        if (u >= nlive) break;  // the same for the whole warp
        float vf[DPL];
        thread::unpack_words<W>(vr[u], vf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          const float w = __shfl_sync(0xffffffffu, pe[h], u);
#pragma unroll
          for (int t = 0; t < DPL; ++t) o[h][t] = fmaf(w, vf[t], o[h][t]);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
      for (int t = 0; t < DPL; ++t) wo[(warp * G + h) * HD + lane * DPL + t] = o[h][t];
  } else {
    // The other head sizes, and 64-dimension heads in groups of more than 8 query heads
    // (MmaAttention's limit): the rows straight from the cache into registers, U = 8 rows a batch
    // (64 KB in flight per block) for up to 4 query heads a group, else 2.
    using LA = LaneAttention<C>;
    LA la(q);
    la.template attend<LA::QREG ? 8 : 2>(q, p0, p1, pos, kc, vc, 0, kn, vn);
    la.finish(wo);
#pragma unroll
    for (int h = 0; h < G; ++h) { m[h] = la.m[h]; l[h] = la.l[h]; }
  }
  if constexpr (!C::KV_RING && !MMA && !MMA1)
#pragma unroll
    for (int h = 0; h < G; ++h)
      if (lane == 0) { wm[warp * G + h] = m[h]; wl[warp * G + h] = l[h]; }
  __syncthreads();

  // Combine the warps: out = sum_w o_w e^(m_w - M), sum = sum_w l_w e^(m_w - M).
  float* out_o = c.scratch_w(C::Scratch::ATTN_O, layer);
  float* out_ml = c.scratch_w(C::Scratch::ATTN_ML, layer);
  for (int e = threadIdx.x; e < G * HD; e += C::THREADS) {
    const int h = e / HD, d = e % HD, qh = g * G + h;
    float M = -INFINITY;
    for (int w = 0; w < WARPS; ++w) M = fmaxf(M, wm[w * G + h]);
    float acc = 0.f, sum = 0.f;
    if (M != -INFINITY) {
      for (int w = 0; w < WARPS; ++w) {
        const float f = __expf(wm[w * G + h] - M);
        acc += wo[(w * G + h) * HD + d] * f;
        sum += wl[w * G + h] * f;
      }
    }
    const size_t slot = (static_cast<size_t>(b) * C::NH + qh) * NS + j;
    if constexpr (C::ATTN_POLLED) {  // words {value, step}: the combiner polls them
      auto* words = reinterpret_cast<unsigned long long*>(out_o);
      thread::st_flagged(words + slot * HD + d, acc, c.a.epoch);
      if (d == 0) {
        thread::st_flagged(reinterpret_cast<unsigned long long*>(out_ml) + slot * 2, M, c.a.epoch);
        thread::st_flagged(reinterpret_cast<unsigned long long*>(out_ml) + slot * 2 + 1, sum, c.a.epoch);
      }
    } else {
      out_o[slot * HD + d] = acc;
      if (d == 0) { out_ml[slot * 2] = M; out_ml[slot * 2 + 1] = sum; }
    }
  }
  // Append the new key and value: the split holding position pos owns that cache slot.
  if (p0 <= pos && pos < p1) {
    for (int d = threadIdx.x; d < HD; d += C::THREADS) {
      kc[static_cast<size_t>(pos) * HD + d] = kn[d];
      vc[static_cast<size_t>(pos) * HD + d] = vn[d];
    }
  }
  __syncthreads();
  // The group's combiner: its last split (Plan.attn_polled: it runs behind the group's other
  // splits), which polls their partials; else the last split to finish. It publishes the group
  // for all its splits. wo is free again: it holds the splits' (m, l) while they are combined.
  // (Leaving the partials to the O tasks, each split counting itself and every O task combining
  // all heads while it stages, was slower at batch 1 on an H200: Llama-3.2-1B 0.840 -> 0.881
  // ms/token at context 4,096, Llama-3-8B 4.066 -> 4.189; every O task then reads all the
  // partials, 128 KB, from L2. Branch exp/o-combines; benchmarks/RESULTS.md, session 21.)
  const int group = b * C::NKV + g;
  bool combiner;
  if constexpr (C::ATTN_POLLED) combiner = j == NS - 1;
  else combiner = arrive_last(c.counter(C::Counters::ATTN_ARRIVE, layer) + group, NS, c.a.epoch);
  if (combiner) {
    combine_splits<C>(c, layer, idx, b, g, wo);
    __syncthreads();
    signal(c.counter(C::Counters::ATTN, layer) + group, NS);
  }
}

}  // namespace adamk::block
