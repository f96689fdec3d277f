// adamk/attention.cuh: one task of decode attention (block scope).
//
// A task covers one sequence b, one K/V head g with the G query heads that share it (GQA: the
// K/V bytes are read once for all of them) and split j of the positions 0..pos (flash-decoding).
// It norms each q head and the new k head where the model does (Qwen3's q/k RMSNorm), applies
// RoPE to q and to the new k, appends the new k and v to the cache when position pos
// falls in its split, and writes an unnormalised partial result with its running max and sum.
// One split of each group combines the group's partials into the bf16 attention output that the
// O projection multiplies (adamk/attention_combine.cuh), and only then publishes the group (all
// its splits' counts at once). How the split's positions are read and multiplied is one of the
// ways of adamk/attention_paths.cuh.
#pragma once
#include <type_traits>
#include "adamk/attention_combine.cuh"
#include "adamk/attention_paths.cuh"
#include "adamk/bf16.cuh"
#include "adamk/context.cuh"

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
  thread::poll_flagged<N * KS>([&](int i) { return part + i % KS * C::B * C::NQKV + cols[i / KS]; }, on, c.epoch,
                               v, WaitSite{c.a.timeout, ATTN, layer, idx}, -1);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < KS; ++k) s += v[i * KS + k];
    out[i] = thread::bf16_round(s);
  }
}

// Whether the model RMS-norms every q and k head before RoPE: the layout then has their weights
// (Weights::QK_NORM, present only in such kernels).
template <class C, class = void>
struct HasQkNorm : std::false_type {};
template <class C>
struct HasQkNorm<C, std::void_t<decltype(C::Weights::QK_NORM)>> : std::true_type {};

// The q/k head RMSNorm of the thread's rotation pairs x (load_qkv_roped's layout), as HF's q_norm /
// k_norm in bf16: y = bf16(bf16(x * rsqrt(mean(x^2) + EPS)) * w), w the head's weight
// (Weights::QK_NORM: q's HD values, then k's). A head's HALF pairs fill whole warps of one
// iteration, so each warp sums its squares with shuffles and a head adds its warps' sums in order.
// The sums pass through wo (free until attend), then a barrier.
template <class C, int IT>
__device__ __forceinline__ void qk_norm(const Ctx<C>& c, int layer, const AttnTask<C>& t, float (&x)[2 * IT + 1]) {
  constexpr int HD = C::HD, G = C::G, HALF = HD / 2, NR = (G + 1) * HALF, WPH = HALF / 32;
  static_assert(C::THREADS % HALF == 0 && HALF % 32 == 0, "a head's pairs in whole warps of one iteration");
#pragma unroll
  for (int it = 0; it < IT; ++it) {
    const bool live = threadIdx.x + it * C::THREADS < NR;
    const float s = warp::sum(live ? x[2 * it] * x[2 * it] + x[2 * it + 1] * x[2 * it + 1] : 0.f);
    if (t.lane == 0) t.wo[it * WARPS + t.warp] = s;
  }
  __syncthreads();
  const __nv_bfloat16* w = c.weight(C::Weights::QK_NORM, layer);
#pragma unroll
  for (int it = 0; it < IT; ++it) {
    const int e = threadIdx.x + it * C::THREADS, hh = e / HALF, d = e % HALF;
    if (e >= NR) continue;
    const float* sums = t.wo + it * WARPS + (threadIdx.x - d) / 32;  // the head's warps
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < WPH; ++k) ss += sums[k];
    const float r = rsqrtf(ss / HD + C::EPS);
    const __nv_bfloat16* wh = w + (hh < G ? 0 : HD);
    x[2 * it] = thread::bf16_round(thread::bf16_round(x[2 * it] * r) * __bfloat162float(wh[d]));
    x[2 * it + 1] = thread::bf16_round(thread::bf16_round(x[2 * it + 1] * r) * __bfloat162float(wh[d + HALF]));
  }
}

// The task's inputs. Reads: the QKV stage's partials of the group's q, k and v (qkv_values).
// Waits for: those words to carry this step's epoch (no counter). Writes: the roped queries and
// key (head-normed first where HasQkNorm) and the value to the attention scratch (q, kn, vn), then
// a barrier.
// RoPE, rotate-half convention, with bf16 rounding where the reference rounds:
// x * cos + rotate_half(x) * sin, cos and sin of pos * inv_freq cast to bf16. The thread's q/k/v
// values: both halves of its IT rotation pairs, then its dimension of v.
template <class C>
__device__ __forceinline__ void load_qkv_roped(const Ctx<C>& c, int layer, int idx, const AttnTask<C>& t) {
  constexpr int HD = C::HD, G = C::G, HALF = HD / 2;
  constexpr int NR = (G + 1) * HALF, IT = (NR + C::THREADS - 1) / C::THREADS;
  static_assert(HD <= C::THREADS, "a thread per dimension of v");
  const int g = t.g;
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
  qkv_values<C>(c, layer, idx, t.b, cols, live, x);
  if constexpr (HasQkNorm<C>::value) qk_norm<C, IT>(c, layer, t, x);
  const float xv = x[2 * IT];
#pragma unroll
  for (int it = 0; it < IT; ++it) {
    const float x1 = x[2 * it], x2 = x[2 * it + 1];
    const int e = threadIdx.x + it * C::THREADS, hh = e / HALF, d = e % HALF;
    if (e >= NR) continue;
    const float ang = static_cast<float>(t.pos) * C::inv_freq(d);
    const float cs = thread::bf16_round(cosf(ang)), sn = thread::bf16_round(sinf(ang));
    const float lo = thread::bf16_round(thread::bf16_round(x1 * cs) - thread::bf16_round(x2 * sn));
    const float hi = thread::bf16_round(thread::bf16_round(x2 * cs) + thread::bf16_round(x1 * sn));
    if (hh < G) {
      t.q[hh * HD + d] = lo;
      t.q[hh * HD + d + HALF] = hi;
    } else {
      t.kn[d] = __float2bfloat16_rn(lo);  // exact: already rounded
      t.kn[d + HALF] = __float2bfloat16_rn(hi);
    }
  }
  if (threadIdx.x < HD) t.vn[threadIdx.x] = __float2bfloat16_rn(xv);
  __syncthreads();
}

// One element of a split's partial where the combiner polls it (Cfg::ATTN_POLLED): words
// {value, step}; the (m, l) words with dimension 0.
template <class C>
__device__ __forceinline__ void put_partial_polled(const Ctx<C>& c, float* out_o, float* out_ml, size_t slot, int d,
                                                   float acc, float M, float sum) {
  auto* words = reinterpret_cast<unsigned long long*>(out_o);
  thread::st_flagged(words + slot * C::HD + d, acc, c.epoch);
  if (d == 0) {
    thread::st_flagged(reinterpret_cast<unsigned long long*>(out_ml) + slot * 2, M, c.epoch);
    thread::st_flagged(reinterpret_cast<unsigned long long*>(out_ml) + slot * 2 + 1, sum, c.epoch);
  }
}

// The same where an arrival counter orders the partials: plain floats.
template <class C>
__device__ __forceinline__ void put_partial_counted(float* out_o, float* out_ml, size_t slot, int d, float acc,
                                                    float M, float sum) {
  out_o[slot * C::HD + d] = acc;
  if (d == 0) { out_ml[slot * 2] = M; out_ml[slot * 2 + 1] = sum; }
}

// The split's partial result. Reads: the warps' running max, sum and output (wm, wl, wo, after a
// barrier). Writes: out = sum_w o_w e^(m_w - M) and sum = sum_w l_w e^(m_w - M) over the warps w,
// with M, for each query head of the group (Scratch ATTN_O, ATTN_ML, slot (b, head, j)).
template <class C>
__device__ __forceinline__ void store_partial(const Ctx<C>& c, int layer, const AttnTask<C>& t) {
  constexpr int HD = C::HD, G = C::G, NS = C::ATTN_SPLITS;
  float* out_o = c.scratch_w(C::Scratch::ATTN_O, layer);
  float* out_ml = c.scratch_w(C::Scratch::ATTN_ML, layer);
  for (int e = threadIdx.x; e < G * HD; e += C::THREADS) {
    const int h = e / HD, d = e % HD, qh = t.g * G + h;
    float M = -INFINITY;
    for (int w = 0; w < WARPS; ++w) M = fmaxf(M, t.wm[w * G + h]);
    float acc = 0.f, sum = 0.f;
    if (M != -INFINITY) {
      for (int w = 0; w < WARPS; ++w) {
        const float f = __expf(t.wm[w * G + h] - M);
        acc += t.wo[(w * G + h) * HD + d] * f;
        sum += t.wl[w * G + h] * f;
      }
    }
    const size_t slot = (static_cast<size_t>(t.b) * C::NH + qh) * NS + t.j;
    if constexpr (C::ATTN_POLLED) put_partial_polled<C>(c, out_o, out_ml, slot, d, acc, M, sum);
    else put_partial_counted<C>(out_o, out_ml, slot, d, acc, M, sum);
  }
}

// Append the new key and value: the split holding position pos owns that cache slot.
template <class C>
__device__ __forceinline__ void append_kv(const AttnTask<C>& t) {
  if (t.p0 <= t.pos && t.pos < t.p1) {
    for (int d = threadIdx.x; d < C::HD; d += C::THREADS) {
      t.kc[static_cast<size_t>(t.pos) * C::HD + d] = t.kn[d];
      t.vc[static_cast<size_t>(t.pos) * C::HD + d] = t.vn[d];
    }
  }
}

// Cfg::ATTN_POLLED: the group's last split combines (it runs behind the group's other splits and
// polls their partials) and publishes the group for all its splits. wo is free again: it holds
// the splits' (m, l) while they are combined.
template <class C>
__device__ __forceinline__ void finish_group_polled(Ctx<C>& c, int layer, int idx, const AttnTask<C>& t) {
  constexpr int NS = C::ATTN_SPLITS;
  const int group = t.b * C::NKV + t.g;
  if (t.j == NS - 1) {
    combine_splits_polled<C>(c, layer, idx, t.b, t.g, t.wo);
    __syncthreads();
    signal(c.counter(C::Counters::ATTN, layer) + group, NS);
  }
}

// Otherwise the last split to finish (the group's arrival counter elects it) combines and
// publishes the group for all its splits. The split combine stays with attention: see
// docs/experiments.md, "Split combine in the O tasks".
template <class C>
__device__ __forceinline__ void finish_group_counted(Ctx<C>& c, int layer, const AttnTask<C>& t) {
  constexpr int NS = C::ATTN_SPLITS;
  const int group = t.b * C::NKV + t.g;
  if (arrive_last(c.counter(C::Counters::ATTN_ARRIVE, layer) + group, NS, c.epoch)) {
    combine_splits_counted<C>(c, layer, t.b, t.g);
    __syncthreads();
    signal(c.counter(C::Counters::ATTN, layer) + group, NS);
  }
}

// Attention task idx of `layer`: inputs, the split's positions (ATTN_WAY), partial, append,
// combine.
template <class C>
__device__ void attention_task(Ctx<C>& c, int layer, int idx) {
  const AttnTask<C> t(c, layer, idx);
  load_qkv_roped<C>(c, layer, idx, t);
#ifdef ADAMK_PROFILE
  c.t_staged = global_ns();
#endif
  AttnEngine<C> e(t.q);  // the way's running state, in this frame (see attend)
  attend<C>(c, t, e);
  __syncthreads();
  store_partial<C>(c, layer, t);
  append_kv<C>(t);
  __syncthreads();
  if constexpr (C::ATTN_POLLED) finish_group_polled<C>(c, layer, idx, t);
  else finish_group_counted<C>(c, layer, t);
}

}  // namespace adamk::block
