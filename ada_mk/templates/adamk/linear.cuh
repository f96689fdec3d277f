// adamk/linear.cuh: one task of a fused linear stage (block scope).
//
// The task multiplies ROWS weight rows over one K-chunk by the staged activation chunk. Its
// weight tile arrives through the ring one chunk (CHUNK_ROWS rows) at a time; each row of a chunk
// is reduced by WPR warps, lane by lane over 16-byte vectors, then across lanes and warps.
#pragma once
#include "adamk/activations.cuh"
#include "adamk/mma.cuh"

namespace adamk::block {

// Build the activation chunk a task of `kind` multiplies, unless the previous task on this SM
// staged the very same chunk (same stage, layer and K-split): consecutive tasks of a stage share it.
template <class C, class T, int KIND>
__device__ void stage_input(Ctx<C>& c, int layer, int split) {
  const int key = KIND | layer << 8 | split << 20;
#ifdef ADAMK_ABLATE_STAGING
  return;
#endif
  if (c.staged == key) return;
  c.staged = key;
  using W = typename C::W;
  const int k0 = split * T::KC;
  if constexpr (KIND == QKV) stage_rmsnorm<C, T::KC>(c, stream_in(c, layer), c.weight(W::INPUT_NORM, layer), k0);
  if constexpr (KIND == GATE_UP) stage_rmsnorm<C, T::KC>(c, stream_mid(c, layer), c.weight(W::POST_NORM, layer), k0);
  if constexpr (KIND == LM_HEAD)
    stage_rmsnorm<C, T::KC>(c, stream_in(c, C::L), c.a.weights + W::FINAL_NORM, k0);
  if constexpr (KIND == O) stage_attention<C, T::KC>(c, layer, k0);
  if constexpr (KIND == DOWN) stage_silu_mul<C, T::KC>(c, layer, k0);
}

// Row `row` of batch entry b is done: store it where its consumers read it.
template <class C, class T, int KIND>
__device__ void store_row(Ctx<C>& c, int layer, int split, int b, int row, float v) {
  using S = typename C::S;
  if constexpr (KIND == QKV) {
    if constexpr (C::HAS_BIAS)
      if (split == 0) v += __bfloat162float(c.weight(C::W::BQKV, layer)[row]);
    c.scratch_w(S::QKV_PART, layer)[(split * C::B + b) * T::N + row] = v;
  }
  if constexpr (KIND == GATE_UP) {
    // Unsplit, the row is final: round it as the reference rounds gate_proj and up_proj, and
    // apply SiLU to the gate here, once per element, rather than in every down task's staging.
    if constexpr (T::KSPLIT == 1) v = row < C::I ? thread::silu_bf16(thread::bf16_round(v)) : thread::bf16_round(v);
    c.scratch_w(S::GATE_UP_PART, layer)[(split * C::B + b) * T::N + row] = v;
  }
  // The residual add rides on split 0. Unsplit, the product is rounded to bf16 first, as the
  // bf16 reference rounds the projection's output before adding it to the stream.
  if constexpr (KIND == O || KIND == DOWN) {
    if (split == 0) {
      if constexpr (T::KSPLIT == 1) v = thread::bf16_round(v);
      v += KIND == O ? stream_in(c, layer).value(b, row) : stream_mid(c, layer).value(b, row);
    }
    c.scratch_w(KIND == O ? S::O_PART : S::DOWN_PART, layer)[(split * C::B + b) * T::N + row] = v;
  }
  if constexpr (KIND == LM_HEAD) c.a.scratch[S::LOGITS + b * C::V + row] = v;
}

template <class C, class T, int KIND>
__device__ void linear_task(Ctx<C>& c, int layer, int idx) {
  constexpr int B = C::B;
  const int tile = idx / T::KSPLIT, split = idx % T::KSPLIT;
  const int row0 = tile * T::ROWS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int crow = warp / T::WPR, part = warp % T::WPR;  // this warp's row in a chunk, its K-part

  stage_input<C, T, KIND>(c, layer, split);  // ordered by the ring's barrier
#ifdef ADAMK_PROFILE
  c.t_staged = global_ns();
#endif

  for (int ch = 0; ch < T::CHUNKS; ++ch) {
    const __nv_bfloat16* w = c.ring.next() + crow * T::KC;
    const int row = row0 + ch * T::CHUNK_ROWS + crow;
    // Tensor cores (adamk/mma.cuh): the warp's 32 lanes take 32 consecutive 16-byte vectors of
    // the row per step, and every lane takes part in each MMA (lanes past the row feed zeros).
    constexpr int BP = (B + 1) / 2;  // sequence pairs: one MMA operand A each
    warp::RowDot dot[BP];
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
          const uint4 x0 = in ? *reinterpret_cast<const uint4*>(c.x + 2 * p * T::KC + v * 8) : zero;
          const uint4 x1 = in && 2 * p + 1 < B ? *reinterpret_cast<const uint4*>(c.x + (2 * p + 1) * T::KC + v * 8) : zero;
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
  __syncthreads();

  for (int e = threadIdx.x; e < T::ROWS * B; e += C::THREADS) {
    const int r = e / B, b = e % B, row = row0 + r;
    float v = 0.f;
    for (int p = 0; p < T::WPR; ++p) v += c.red[(r * T::WPR + p) * B + b];
    if (row < T::N) store_row<C, T, KIND>(c, layer, split, b, row, v);
    if constexpr (KIND == LM_HEAD) c.attn[e] = row < T::N ? v : -INFINITY;
  }

  if constexpr (KIND == LM_HEAD) {
    // This tile's best row for each sequence; the argmax task reduces over tiles.
    __syncthreads();
    if (warp < B) {
      float best = -INFINITY;
      int arg = 0x7fffffff;
      for (int r = lane; r < T::ROWS; r += 32) {
        const float v = c.attn[r * B + warp];
        if (v > best) { best = v; arg = row0 + r; }
      }
      warp::argmax(best, arg);
      if (lane == 0) {
        c.a.scratch[C::S::ARG_VAL + warp * T::TILES + tile] = best;
        reinterpret_cast<int*>(c.a.scratch)[C::S::ARG_IDX + warp * T::TILES + tile] = arg;
      }
    }
  }
  __syncthreads();
  signal(KIND == LM_HEAD ? c.a.counters + C::K::LM_HEAD + tile
                         : c.counter(KIND == QKV ? C::K::QKV : KIND == O ? C::K::O
                                     : KIND == GATE_UP ? C::K::GATE_UP : C::K::DOWN, layer) + tile);
}

}  // namespace adamk::block
