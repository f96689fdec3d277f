// adamk/linear_stages.cuh: what each fused linear stage reads and writes (block scope), one
// specialisation of Stage<C, KIND> per stage:
//
//   T                the stage's tiling (Cfg::Qkv, O, GateUp, Down, LmHead)
//   stage(...)       builds the activation chunk x that the stage multiplies (adamk/activations.cuh)
//   store(...)       stores the task's finished rows (after the multiply's barrier; row_sum),
//                    most through store_rows and the stage's store_row
//   finish(...)      ends the task: its last writes, then a barrier
//   counters(...)    the counters of the stage's tiles
//   GROUP_PUBLISHED  whether a run's tiles are published a group at a time (publish_group), not
//                    by the task itself
#pragma once
#include "adamk/activations.cuh"
#include "adamk/linear_multiply.cuh"

namespace adamk::block {

template <class C, int KIND>
struct Stage;

// A task of a stage of tiling T: tile idx / KSPLIT, K-split idx % KSPLIT, the tile's first row,
// and the thread's warp and lane.
template <class T>
struct LinearTask {
  int tile, split, row0, warp, lane;
  __device__ __forceinline__ explicit LinearTask(int idx)
      : tile(idx / T::KSPLIT), split(idx % T::KSPLIT), row0(tile * T::ROWS), warp(threadIdx.x >> 5),
        lane(threadIdx.x & 31) {}
};

// Every (row, sequence) of the task's tile, a thread each in turn: S::store_row of the row's dot
// product with the sequence, for the rows within the matrix.
template <class C, class S>
__device__ __forceinline__ void store_rows(Ctx<C>& c, int layer, const LinearTask<typename S::T>& t) {
  using T = typename S::T;
  for (int e = threadIdx.x; e < T::ROWS * C::B; e += C::THREADS) {
    const int r = e / C::B, b = e % C::B, row = t.row0 + r;
    const float v = row_sum<C, T>(c, r, b);
    if (row < T::N) S::store_row(c, layer, t.split, b, row, v);
  }
}

// QKV. Stages: bf16(RMSNorm(the stream entering the layer)) with input_layernorm. Stores: each
// K-split's partial (plus the bias, on split 0) as a word {value, step} (thread::st_flagged) that
// attention polls, so no counter publishes it.
template <class C>
struct Stage<C, QKV> {
  using T = typename C::Qkv;
  static constexpr bool GROUP_PUBLISHED = false;
  __device__ static const __nv_bfloat16* norm_weight(const Ctx<C>& c, int layer) {
    return c.weight(C::Weights::INPUT_NORM, layer);
  }
  __device__ static void stage(Ctx<C>& c, int layer, int k0) {
    stage_rmsnorm<C, T>(c, stream_in(c, layer), norm_weight(c, layer), k0);
  }
  __device__ __forceinline__ static void store(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    store_rows<C, Stage>(c, layer, t);
  }
  __device__ static void store_row(Ctx<C>& c, int layer, int split, int b, int row, float v) {
    if constexpr (C::HAS_BIAS)
      if (split == 0) v += __bfloat162float(c.weight(C::Weights::BQKV, layer)[row]);
    unsigned long long* part = reinterpret_cast<unsigned long long*>(c.scratch_w(C::Scratch::QKV_PART, layer));
    thread::st_flagged(part + (split * C::B + b) * T::N + row, v, c.epoch);
  }
  __device__ __forceinline__ static void finish(Ctx<C>&, int, const LinearTask<T>&) { __syncthreads(); }
};

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

// Gate/up. Stages: bf16(RMSNorm(the stream between attention and MLP)) with
// post_attention_layernorm. Stores: SiLU(gate) * up (unsplit) or the partials (K-split).
template <class C>
struct Stage<C, GATE_UP> {
  using T = typename C::GateUp;
  static constexpr bool GROUP_PUBLISHED = true;
  __device__ static const __nv_bfloat16* norm_weight(const Ctx<C>& c, int layer) {
    return c.weight(C::Weights::POST_NORM, layer);
  }
  __device__ static void stage(Ctx<C>& c, int layer, int k0) {
    stage_rmsnorm<C, T>(c, stream_mid(c, layer), norm_weight(c, layer), k0);
  }
  __device__ __forceinline__ static void store(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    if constexpr (T::KSPLIT == 1) store_mlp_act<C, T>(c, layer, t.row0);
    else store_rows<C, Stage>(c, layer, t);
  }
  // K-split: float partials [split][B][2 I] that the down projection sums while it stages
  // (stage_silu_mul).
  __device__ static void store_row(Ctx<C>& c, int layer, int split, int b, int row, float v) {
    c.scratch_w(C::Scratch::GATE_UP_PART, layer)[(split * C::B + b) * T::N + row] = v;
  }
  __device__ __forceinline__ static void finish(Ctx<C>&, int, const LinearTask<T>&) { __syncthreads(); }
  __device__ static unsigned* counters(const Ctx<C>& c, int layer) { return c.counter(C::Counters::GATE_UP, layer); }
  // The down projection's K-chunk that the tile of task idx feeds.
  __device__ static int consumer_group(int idx) { return idx / T::KSPLIT * T::ROWS / (2 * C::Down::KC); }
};

// The published stream's sums of squares: per sequence, over the tile's rows (after a barrier
// that ended the stream's writes), from which every consumer's RMSNorm takes rstd without reading
// the whole stream.
template <class C, int KIND>
__device__ __forceinline__ void publish_sumsq(Ctx<C>& c, int layer, int tile, int row0, int rows,
                                              const __nv_bfloat16* out) {
  constexpr int B = C::B;
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
}

// An unsplit O or down task's end: the tile's sums of squares (its run publishes the tile).
template <class C, int KIND>
__device__ __forceinline__ void finish_stream(Ctx<C>& c, int layer, int tile) {
  using T = typename Stage<C, KIND>::T;
  const int row0 = tile * T::ROWS, rows = min(T::ROWS, T::N - row0);
  __nv_bfloat16* out = stream_out<C, KIND>(c, layer);
  __syncthreads();
  publish_sumsq<C, KIND>(c, layer, tile, row0, rows, out);
}

// A K-split O or down task's end: the last split of the tile to finish (arrival counter) sums the
// partials into the stream (in split order, so every step computes the same bits), publishes the
// sums of squares, and alone bumps the tile's counter, by the split count.
template <class C, int KIND>
__device__ __forceinline__ void finish_stream_split(Ctx<C>& c, int layer, int tile) {
  using T = typename Stage<C, KIND>::T;
  constexpr int B = C::B;
  const int row0 = tile * T::ROWS, rows = min(T::ROWS, T::N - row0);
  __nv_bfloat16* out = stream_out<C, KIND>(c, layer);
  __syncthreads();
  if (!arrive_last(stream_arrivals<C, KIND>(c, layer) + tile, T::KSPLIT, c.epoch)) return;
  const float* part = stream_part<C, KIND>(c, layer);
  for (int e = threadIdx.x; e < rows * B; e += C::THREADS) {
    const int b = e / rows, row = row0 + e % rows;
    float v = 0.f;
#pragma unroll
    for (int s = 0; s < T::KSPLIT; ++s) v += thread::ld_cg(part + (s * B + b) * T::N + row);
    out[b * C::H + row] = __float2bfloat16_rn(v);
  }
  __syncthreads();
  publish_sumsq<C, KIND>(c, layer, tile, row0, rows, out);
  signal(Stage<C, KIND>::counters(c, layer) + tile, T::KSPLIT);
}

// O and down projections: their rows add to the residual stream, split 0's carrying the add.
// Unsplit (SPLIT false), the product is rounded to bf16 first, as the bf16 reference rounds the
// projection's output before adding it to the stream, and the sum is the stream itself (bf16
// [B][H]); its run publishes the tile. K-split, each split stores a float partial and the last
// split to finish sums them and publishes the tile (finish_stream_split).
template <class C, int KIND, class Tiling, bool SPLIT = (Tiling::KSPLIT > 1)>
struct StreamStage;

template <class C, int KIND, class Tiling>
struct StreamStage<C, KIND, Tiling, false> {
  using T = Tiling;
  static constexpr bool GROUP_PUBLISHED = true;
  __device__ __forceinline__ static void store(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    store_rows<C, StreamStage>(c, layer, t);
  }
  __device__ static void store_row(Ctx<C>& c, int layer, int, int b, int row, float v) {
    v = thread::bf16_round(v) + Stage<C, KIND>::residual(c, layer).value(b, row);
    stream_out<C, KIND>(c, layer)[b * C::H + row] = __float2bfloat16_rn(v);
  }
  __device__ __forceinline__ static void finish(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    finish_stream<C, KIND>(c, layer, t.tile);
  }
  __device__ static int consumer_group(int) { return 0; }  // RMSNorm: every consumer needs every tile
};

template <class C, int KIND, class Tiling>
struct StreamStage<C, KIND, Tiling, true> {
  using T = Tiling;
  static constexpr bool GROUP_PUBLISHED = false;
  __device__ __forceinline__ static void store(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    store_rows<C, StreamStage>(c, layer, t);
  }
  __device__ static void store_row(Ctx<C>& c, int layer, int split, int b, int row, float v) {
    if (split == 0) v += Stage<C, KIND>::residual(c, layer).value(b, row);
    stream_part<C, KIND>(c, layer)[(split * C::B + b) * T::N + row] = v;
  }
  __device__ __forceinline__ static void finish(Ctx<C>& c, int layer, const LinearTask<T>& t) {
    finish_stream_split<C, KIND>(c, layer, t.tile);
  }
};

// O. Stages: attention's combined output, bf16 [B][Q]. Residual: the stream entering the layer.
template <class C>
struct Stage<C, O> : StreamStage<C, O, typename C::O> {
  using T = typename C::O;
  __device__ static void stage(Ctx<C>& c, int layer, int k0) {
    stage_copy<C, T>(c, reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::ATTN_OUT, layer)), C::Q, k0);
  }
  __device__ static Stream<C> residual(const Ctx<C>& c, int layer) { return stream_in(c, layer); }
  __device__ static unsigned* counters(const Ctx<C>& c, int layer) { return c.counter(C::Counters::O, layer); }
};

// Down. Stages: SiLU(gate) * up, bf16 [B][I], as the gate/up tasks stored it (unsplit gate/up) or
// summed here from their partials (stage_silu_mul). Residual: the stream between attention and MLP.
template <class C>
struct Stage<C, DOWN> : StreamStage<C, DOWN, typename C::Down> {
  using T = typename C::Down;
  __device__ static void stage(Ctx<C>& c, int layer, int k0) {
    if constexpr (C::GateUp::KSPLIT == 1)
      stage_copy<C, T>(c, reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::MLP_ACT, layer)), C::I, k0);
    else
      stage_silu_mul<C, T>(c, layer, k0);
  }
  __device__ static Stream<C> residual(const Ctx<C>& c, int layer) { return stream_mid(c, layer); }
  __device__ static unsigned* counters(const Ctx<C>& c, int layer) { return c.counter(C::Counters::DOWN, layer); }
};

// LM head. Stages: bf16(RMSNorm(the final stream)) with the final norm. Stores: the logits; its
// end: the tile's best row for each sequence, which the argmax task reduces over tiles.
template <class C>
struct Stage<C, LM_HEAD> {
  using T = typename C::LmHead;
  static constexpr bool GROUP_PUBLISHED = true;
  __device__ static const __nv_bfloat16* norm_weight(const Ctx<C>& c, int) {
    return c.a.weights + C::Weights::FINAL_NORM;
  }
  __device__ static void stage(Ctx<C>& c, int layer, int k0) {
    stage_rmsnorm<C, T>(c, stream_in(c, C::L), norm_weight(c, layer), k0);
  }
  __device__ __forceinline__ static void store(Ctx<C>& c, int, const LinearTask<T>& t) {
    for (int e = threadIdx.x; e < T::ROWS * C::B; e += C::THREADS) {
      const int r = e / C::B, b = e % C::B, row = t.row0 + r;
      const float v = row_sum<C, T>(c, r, b);
      if (row < T::N) store_row(c, b, row, v);
      c.attn[e] = row < T::N ? v : -INFINITY;  // for finish
    }
  }
  __device__ static void store_row(Ctx<C>& c, int b, int row, float v) {
    c.a.scratch[C::Scratch::LOGITS + b * C::V + row] = v;
  }
  __device__ __forceinline__ static void finish(Ctx<C>& c, int, const LinearTask<T>& t) {
    constexpr int B = C::B;
    const int warp = t.warp, lane = t.lane, tile = t.tile, row0 = t.row0;
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
    __syncthreads();
  }
  __device__ static unsigned* counters(const Ctx<C>& c, int) { return c.a.counters + C::Counters::LM_HEAD; }
  __device__ static int consumer_group(int) { return 0; }  // the argmax needs every tile
};

}  // namespace adamk::block
