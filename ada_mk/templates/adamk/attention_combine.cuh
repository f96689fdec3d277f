// adamk/attention_combine.cuh: flash-decoding's reduction of a group's splits (block scope).
//
// For sequence b and the G query heads of K/V head g: out = sum_j o_j e^(m_j - M) / sum_j l_j
// e^(m_j - M) over the splits j, rounded to bf16 (the reference's attention output is a bf16
// tensor), into the attention output that the O projection stages. Every load is issued before
// any is used. Which split combines, and how it knows the others are done, is the plan's choice
// (Cfg::ATTN_POLLED): one function each.
#pragma once
#include "adamk/context.cuh"

namespace adamk::block {

// Cfg::ATTN_POLLED: the group's last split polls the partials, 8-byte words {value, step}
// (thread::st_flagged). Reads: every split's (m, l) and output words of this step (Scratch ATTN_ML,
// ATTN_O). Waits for: those words to carry the step's epoch (no counter). Writes: the group's
// bf16 output (Scratch ATTN_OUT); ml_s ([G][NS][2] floats, shared memory) holds the (m, l) in
// between. The threads poll every split's (m, l) and their own dimensions' outputs at once, then
// meet at a barrier.
template <class C>
__device__ void combine_splits_polled(Ctx<C>& c, int layer, int idx, int b, int g, float* ml_s) {
  constexpr int NS = C::ATTN_SPLITS, HD = C::HD, G = C::G;
  __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(c.scratch_w(C::Scratch::ATTN_OUT, layer)) + b * C::Q + g * G * HD;
  const size_t first = (static_cast<size_t>(b) * C::NH + g * G) * NS;  // split 0 of query head g * G
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
  thread::poll_flagged<EPT * NS + MPT>(at, live, c.epoch, v, WaitSite{c.a.timeout, ATTN, layer, idx}, -2);
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
}

// The last split to finish combines (Cfg::ATTN_POLLED false): the arrival counter that elected it
// acquired the other splits' plain float partials. Reads: every split's (m, l) and output
// (Scratch ATTN_ML, ATTN_O). Waits for: nothing. Writes: the group's bf16 output (Scratch
// ATTN_OUT), two dimensions a thread.
template <class C>
__device__ void combine_splits_counted(Ctx<C>& c, int layer, int b, int g) {
  constexpr int NS = C::ATTN_SPLITS, HD = C::HD, G = C::G;
  __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(c.scratch_w(C::Scratch::ATTN_OUT, layer)) + b * C::Q + g * G * HD;
  const size_t first = (static_cast<size_t>(b) * C::NH + g * G) * NS;  // split 0 of query head g * G
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

}  // namespace adamk::block
