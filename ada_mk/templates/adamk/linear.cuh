// adamk/linear.cuh: one task of a fused linear stage (block scope).
//
// The task multiplies ROWS weight rows over one K-chunk by the staged activation chunk. Its
// weight tile arrives through the ring one chunk (CHUNK_ROWS rows x CHUNK_COLS columns) at a
// time; the chunk's rows are multiplied on the tensor cores, one row per warp group at batch 1
// (multiply_rows) or all 16 rows by every warp with several sequences (multiply_batched), then
// reduced across warps.
#pragma once
#include "adamk/activations.cuh"
#include "adamk/mma.cuh"

namespace adamk::block {

// Which activation chunk a task stages: its stage, layer and K-split (Ctx::staged).
template <int KIND>
__device__ __forceinline__ int staging_key(int layer, int split) { return KIND | layer << 8 | split << 20; }

// The RMSNorm weights of the stages whose input is normalised (QKV, gate/up, LM head).
template <class C, int KIND>
__device__ const __nv_bfloat16* norm_weight(const Ctx<C>& c, int layer) {
  using Weights = typename C::Weights;
  if constexpr (KIND == QKV) return c.weight(Weights::INPUT_NORM, layer);
  else if constexpr (KIND == GATE_UP) return c.weight(Weights::POST_NORM, layer);
  else return c.a.weights + Weights::FINAL_NORM;
}

// Before a task waits for its inputs (Hopper): the copy of its RMSNorm weights, if it will stage
// a normalised input (prefetch_gamma). Returns whether a copy went out.
#ifdef ADAMK_BULK_COPY
template <class C, class T, int KIND>
__device__ bool prefetch_norm(Ctx<C>& c, int layer, int idx) {
  const int split = idx % T::KSPLIT;
  return prefetch_gamma<C, T>(c, staging_key<KIND>(layer, split), norm_weight<C, KIND>(c, layer), split);
}
#endif

template <class C>
__device__ bool prefetch_norm_weights(Ctx<C>& c, int kind, int layer, int idx) {
#ifdef ADAMK_BULK_COPY
  switch (kind) {
    case QKV: return prefetch_norm<C, typename C::Qkv, QKV>(c, layer, idx);
    case GATE_UP: return prefetch_norm<C, typename C::GateUp, GATE_UP>(c, layer, idx);
    case LM_HEAD: return prefetch_norm<C, typename C::LmHead, LM_HEAD>(c, layer, idx);
  }
#endif
  return false;
}

// A debug build that gives up waiting leaves the kernel: first let the prefetched weights land
// (the rows' arrival will not come: arrive with no bytes instead).
template <class C>
__device__ void drain_norm_weights(Ctx<C>& c, bool started) {
#ifdef ADAMK_BULK_COPY
  if (!started) return;
  if (threadIdx.x == 0) c.bulk.expect(0);
  c.bulk.wait();
#endif
}

// Build the activation chunk a task of `kind` multiplies, unless the previous task on this SM
// staged the very same chunk (same stage, layer and K-split): consecutive tasks of a stage share it.
template <class C, class T, int KIND>
__device__ void stage_input(Ctx<C>& c, int layer, int split) {
  const int key = staging_key<KIND>(layer, split);
#ifdef ADAMK_ABLATE_STAGING
  return;
#endif
  if (c.staged == key) return;
  c.staged = key;
  const int k0 = split * T::KC;
  if constexpr (KIND == QKV) stage_rmsnorm<C, T>(c, stream_in(c, layer), norm_weight<C, QKV>(c, layer), k0);
  if constexpr (KIND == GATE_UP) stage_rmsnorm<C, T>(c, stream_mid(c, layer), norm_weight<C, GATE_UP>(c, layer), k0);
  if constexpr (KIND == LM_HEAD) stage_rmsnorm<C, T>(c, stream_in(c, C::L), norm_weight<C, LM_HEAD>(c, layer), k0);
  if constexpr (KIND == O)
    stage_copy<C, T>(c, reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::ATTN_OUT, layer)), C::Q, k0);
  if constexpr (KIND == DOWN) {
    if constexpr (C::GateUp::KSPLIT == 1)
      stage_copy<C, T>(c, reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::MLP_ACT, layer)), C::I, k0);
    else
      stage_silu_mul<C, T>(c, layer, k0);
  }
}

// The finished dot product of the task's row r with sequence b: the sum of its warps' parts in
// red (one part after the batched multiply's sum_group).
template <class C, class T>
__device__ float row_sum(const Ctx<C>& c, int r, int b) {
  constexpr int PARTS = C::BATCHED ? 1 : T::WPR;
  float v = 0.f;
  for (int p = 0; p < PARTS; ++p) v += c.red[(r * PARTS + p) * C::B + b];
  return v;
}

// Row `row` of batch entry b is done: store it where its consumers read it.
template <class C, class T, int KIND>
__device__ void store_row(Ctx<C>& c, int layer, int split, int b, int row, float v) {
  using Scratch = typename C::Scratch;
  if constexpr (KIND == QKV) {
    if constexpr (C::HAS_BIAS)
      if (split == 0) v += __bfloat162float(c.weight(C::Weights::BQKV, layer)[row]);
    unsigned long long* part = reinterpret_cast<unsigned long long*>(c.scratch_w(Scratch::QKV_PART, layer));
    thread::st_flagged(part + (split * C::B + b) * T::N + row, v, c.a.epoch);
  }
  if constexpr (KIND == GATE_UP) {  // K-split only (unsplit: store_mlp_act)
    c.scratch_w(Scratch::GATE_UP_PART, layer)[(split * C::B + b) * T::N + row] = v;
  }
  // The residual add rides on split 0. Unsplit, the product is rounded to bf16 first, as the
  // bf16 reference rounds the projection's output before adding it to the stream, and the sum is
  // the stream itself; K-split, the last split to finish sums the partials (finish_stream).
  if constexpr (KIND == O || KIND == DOWN) {
    if (split == 0) {
      if constexpr (T::KSPLIT == 1) v = thread::bf16_round(v);
      v += KIND == O ? stream_in(c, layer).value(b, row) : stream_mid(c, layer).value(b, row);
    }
    if constexpr (T::KSPLIT == 1) stream_out<C, KIND>(c, layer)[b * C::H + row] = __float2bfloat16_rn(v);
    else stream_part<C, KIND>(c, layer)[(split * C::B + b) * T::N + row] = v;
  }
  if constexpr (KIND == LM_HEAD) c.a.scratch[Scratch::LOGITS + b * C::V + row] = v;
}

// An unsplit gate/up task's rows are final and come in (gate, up) pairs (the weights' rows are
// interleaved): store bf16(bf16(silu(gate)) * up) of its columns, as HF's MLP rounds them, once
// per element, so the down projection stages a plain copy.
template <class C, class T>
__device__ void store_mlp_act(Ctx<C>& c, int layer, int row0) {
  constexpr int B = C::B;
  __nv_bfloat16* act = reinterpret_cast<__nv_bfloat16*>(c.scratch_w(C::Scratch::MLP_ACT, layer));
  for (int e = threadIdx.x; e < T::ROWS / 2 * B; e += C::THREADS) {
    const int r = 2 * (e / B), b = e % B;
    if (row0 + r >= T::N) continue;
    const float g = thread::bf16_round(row_sum<C, T>(c, r, b)), u = thread::bf16_round(row_sum<C, T>(c, r + 1, b));
    act[b * C::I + (row0 + r) / 2] = __float2bfloat16_rn(thread::silu_bf16(g) * u);
  }
}

// The counters of stage KIND's tiles: this layer's, or the LM head's (one set per step).
template <class C, int KIND>
__device__ unsigned* tile_counters(const Ctx<C>& c, int layer) {
  using Counters = typename C::Counters;
  if constexpr (KIND == LM_HEAD) return c.a.counters + Counters::LM_HEAD;
  else return c.counter(KIND == GATE_UP ? Counters::GATE_UP : KIND == O ? Counters::O : Counters::DOWN, layer);
}

// Whether a linear task's tile is published with its run's group (publish_group): all but QKV
// tiles, whose words carry their step (store_row), and K-split O and down tiles, whose last split
// publishes them (finish_stream).
template <class T, int KIND>
constexpr bool GROUP_PUBLISHED = KIND != QKV && !((KIND == O || KIND == DOWN) && T::KSPLIT > 1);

// The O and down tasks of a tile have stored their rows: publish the tile's part of the residual
// stream (bf16 [B][H]) and its sums of squares per sequence, from which every consumer's RMSNorm
// takes rstd without reading the whole stream. K-split, the last split of the tile to finish sums
// the partials first (in split order, so every step computes the same bits); it alone bumps the
// tile's counter, by the split count.
template <class C, class T, int KIND>
__device__ void finish_stream(Ctx<C>& c, int layer, int tile) {
  constexpr int B = C::B;
  const int row0 = tile * T::ROWS, rows = min(T::ROWS, T::N - row0);
  __nv_bfloat16* out = stream_out<C, KIND>(c, layer);
  __syncthreads();
  if constexpr (T::KSPLIT > 1) {
    if (!arrive_last(stream_arrivals<C, KIND>(c, layer) + tile, T::KSPLIT, c.a.epoch)) return;
    const float* part = stream_part<C, KIND>(c, layer);
    for (int e = threadIdx.x; e < rows * B; e += C::THREADS) {
      const int b = e / rows, row = row0 + e % rows;
      float v = 0.f;
#pragma unroll
      for (int s = 0; s < T::KSPLIT; ++s) v += thread::ld_cg(part + (s * B + b) * T::N + row);
      out[b * C::H + row] = __float2bfloat16_rn(v);
    }
    __syncthreads();
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp < B) {
    float ss = 0.f;
    for (int r = lane; r < rows; r += 32) {
      const float v = __bfloat162float(out[warp * C::H + row0 + r]);
      ss += v * v;
    }
    ss = warp::sum(ss);
    if (lane == 0) c.scratch_w(KIND == O ? C::Scratch::O_SUMSQ : C::Scratch::DOWN_SUMSQ, layer)[tile * B + warp] = ss;
  }
  __syncthreads();
  if constexpr (!GROUP_PUBLISHED<T, KIND>) signal(tile_counters<C, KIND>(c, layer) + tile, T::KSPLIT);
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
    warp::TileDot dot;
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

template <class C, class T, int KIND>
__device__ void linear_task(Ctx<C>& c, int layer, int idx) {
  constexpr int B = C::B;
  const int tile = idx / T::KSPLIT, split = idx % T::KSPLIT;
  const int row0 = tile * T::ROWS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  stage_input<C, T, KIND>(c, layer, split);  // ordered by the ring's barrier
#ifdef ADAMK_PROFILE
  c.t_staged = global_ns();
#endif
  if constexpr (C::BATCHED) multiply_batched<C, T>(c, row0);
  else multiply_rows<C, T>(c, row0);
  __syncthreads();

  if constexpr (KIND == GATE_UP && T::KSPLIT == 1) {
    store_mlp_act<C, T>(c, layer, row0);
  } else {
    for (int e = threadIdx.x; e < T::ROWS * B; e += C::THREADS) {
      const int r = e / B, b = e % B, row = row0 + r;
      const float v = row_sum<C, T>(c, r, b);
      if (row < T::N) store_row<C, T, KIND>(c, layer, split, b, row, v);
      if constexpr (KIND == LM_HEAD) c.attn[e] = row < T::N ? v : -INFINITY;
    }
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
        c.a.scratch[C::Scratch::ARG_VAL + warp * T::TILES + tile] = best;
        reinterpret_cast<int*>(c.a.scratch)[C::Scratch::ARG_IDX + warp * T::TILES + tile] = arg;
      }
    }
  }
  if constexpr (KIND == O || KIND == DOWN) finish_stream<C, T, KIND>(c, layer, tile);
  else __syncthreads();  // the task's writes are done (publish_group publishes them)
}

// Which consumers the tile of task idx feeds: the down projection's K-chunk (gate/up); for the
// LM head (the argmax) and the residual stream (O, down: RMSNorm), every consumer needs every tile.
template <class C, class T, int KIND>
__device__ int consumer_group(int idx) {
  if constexpr (KIND == GATE_UP) return idx / T::KSPLIT * T::ROWS / (2 * C::Down::KC);
  return 0;
}

// The tasks of a run of gate/up, LM head or unsplit O or down tiles (consecutive on this SM:
// same stage and layer, tasks first, first + stride, ...) wait for the same inputs, so none of
// them waits for another.
// Their tiles are published a group at a time (consumer_group): when the next task of the run
// feeds other consumers, or the run ends, one release fence for the group's tiles (after the
// barrier that ended the last task), then each tile's add. A fence per task held the block
// there, before its next chunk, until the task's stores were acknowledged (an L2 round trip on a
// loaded card); a consumer still sees its tiles when the last of them is done, as before.
template <class C, class T, int KIND>
__device__ void publish_group(Ctx<C>& c, int layer, int4 run, int i) {
  if constexpr (!GROUP_PUBLISHED<T, KIND>) return;
  const auto task = [&](int t) { return run.y + t * run.z; };
  const int group = consumer_group<C, T, KIND>(task(i));
  if (threadIdx.x != 0 || (i + 1 < run.w && consumer_group<C, T, KIND>(task(i + 1)) == group)) return;
  unsigned* counters = tile_counters<C, KIND>(c, layer);
#ifndef ADAMK_ABLATE_RELEASE
  thread::fence_release();
#endif
  for (int t = i; t >= 0 && consumer_group<C, T, KIND>(task(t)) == group; --t)
    thread::add_relaxed(counters + task(t) / T::KSPLIT, 1u);
}

// After task i of a run of any stage: its group's publication, if it ends there.
template <class C>
__device__ void publish_group(Ctx<C>& c, int kind, int layer, int4 run, int i) {
  switch (kind) {
    case GATE_UP: publish_group<C, typename C::GateUp, GATE_UP>(c, layer, run, i); break;
    case LM_HEAD: publish_group<C, typename C::LmHead, LM_HEAD>(c, layer, run, i); break;
    case O: publish_group<C, typename C::O, O>(c, layer, run, i); break;
    case DOWN: publish_group<C, typename C::Down, DOWN>(c, layer, run, i); break;
  }
}

}  // namespace adamk::block
