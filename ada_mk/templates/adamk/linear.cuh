// adamk/linear.cuh: one task of a fused linear stage (block scope).
//
// The task multiplies ROWS weight rows over one K-chunk by the staged activation chunk. Its
// weight tile arrives through the stream ring one chunk (CHUNK_ROWS rows x CHUNK_COLS columns) at
// a time (adamk/linear_multiply.cuh). What the task stages, where its rows go and how it ends are
// its stage's (Stage<C, KIND>, adamk/linear_stages.cuh).
#pragma once
#include "adamk/linear_multiply_4bit.cuh"
#include "adamk/linear_multiply_8bit.cuh"
#include "adamk/linear_stages.cuh"

namespace adamk::block {

// The task's rows times the staged chunk: one row per warp group with one sequence, all 16 rows
// of a group by every warp with several sequences (Cfg::BATCHED); bf16 weights, 8-bit codes
// (Tiling::Q8) or 4-bit codes (Tiling::Q4). Reads: the ring's chunks (StreamRing::next waits for
// each) and x. Writes: red, then a barrier.
template <class C, class T>
__device__ __forceinline__ void multiply(Ctx<C>& c, int row0) {
  if constexpr (T::Q4 && C::BATCHED) multiply_batched_4bit<C, T>(c, row0);
  else if constexpr (T::Q4) multiply_rows_4bit<C, T>(c, row0);
  else if constexpr (T::Q8 && C::BATCHED) multiply_batched_8bit<C, T>(c, row0);
  else if constexpr (T::Q8) multiply_rows_8bit<C, T>(c, row0);
  else if constexpr (C::BATCHED) multiply_batched<C, T>(c, row0);
  else multiply_rows<C, T>(c, row0);
  __syncthreads();
}

// Which activation chunk a task stages: its stage, layer and K-split (Ctx::staged).
template <int KIND>
__device__ __forceinline__ int staging_key(int layer, int split) { return KIND | layer << 8 | split << 20; }

// Before a task waits for its inputs (Hopper): the copy of its RMSNorm weights, if it will stage
// a normalised input (prefetch_gamma). Returns whether a copy went out.
#ifdef ADAMK_BULK_COPY
template <class C, int KIND>
__device__ bool prefetch_norm(Ctx<C>& c, int layer, int idx) {
  using S = Stage<C, KIND>;
  const int split = idx % S::T::KSPLIT;
  return prefetch_gamma<C, typename S::T>(c, staging_key<KIND>(layer, split), S::norm_weight(c, layer), split);
}
#endif

template <class C>
__device__ bool prefetch_norm_weights(Ctx<C>& c, int kind, int layer, int idx) {
#ifdef ADAMK_BULK_COPY
  switch (kind) {
    case QKV: return prefetch_norm<C, QKV>(c, layer, idx);
    case GATE_UP: return prefetch_norm<C, GATE_UP>(c, layer, idx);
    case LM_HEAD: return prefetch_norm<C, LM_HEAD>(c, layer, idx);
  }
#endif
  return false;
}

// A block whose wait ran out of time leaves the kernel: first let the prefetched weights land
// (the rows' arrival will not come: arrive with no bytes instead).
template <class C>
__device__ void drain_norm_weights(Ctx<C>& c, bool started) {
#ifdef ADAMK_BULK_COPY
  if (!started) return;
  if (threadIdx.x == 0) c.bulk.expect(0);
  c.bulk.wait();
#endif
}

// Build the activation chunk a task of `kind` multiplies (Stage::stage), unless the previous task
// on this SM staged the very same chunk (same stage, layer and K-split): consecutive tasks of a
// stage share it.
template <class C, int KIND>
__device__ void stage_input(Ctx<C>& c, int layer, int split) {
  using T = typename Stage<C, KIND>::T;
  const int key = staging_key<KIND>(layer, split);
#ifdef ADAMK_ABLATE_STAGING
  return;
#endif
  if (c.staged == key) return;
  c.staged = key;
  Stage<C, KIND>::stage(c, layer, split * T::KC);
}

// Task idx of stage KIND: tile idx / KSPLIT, K-split idx % KSPLIT. Reads: the stage's input
// (staged after the block's wait for its counters, megakernel.cuh) and its weight chunks through
// the ring. Writes: the tile's rows (Stage::store), then the stage's end (Stage::finish).
template <class C, int KIND>
__device__ void linear_task(Ctx<C>& c, int layer, int idx) {
  using S = Stage<C, KIND>;
  const LinearTask<typename S::T> t(idx);
  stage_input<C, KIND>(c, layer, t.split);  // ordered by the ring's barrier
#ifdef ADAMK_PROFILE
  c.t_staged = global_ns();
#endif
  multiply<C, typename S::T>(c, t.row0);
  S::store(c, layer, t);
  S::finish(c, layer, t);
}

// The tasks of a run of gate/up, LM head or unsplit O or down tiles (consecutive on this SM:
// same stage and layer, tasks first, first + stride, ...) wait for the same inputs, so none of
// them waits for another. Their tiles are published a group at a time (Stage::consumer_group):
// when the next task of the run feeds other consumers, or the run ends, one release fence for the
// group's tiles (after the barrier that ended the last task), then each tile's add. A consumer
// sees its tiles when the last of them is done; the block does not hold its next chunk behind a
// fence per task, which waits until the task's stores are acknowledged (an L2 round trip on a
// loaded card).
template <class C, int KIND>
__device__ void publish_group(Ctx<C>& c, int layer, int4 run, int i) {
  using S = Stage<C, KIND>;
  if constexpr (!S::GROUP_PUBLISHED) return;
  else {
    const auto task = [&](int t) { return run.y + t * run.z; };
    const int group = S::consumer_group(task(i));
    if (threadIdx.x != 0 || (i + 1 < run.w && S::consumer_group(task(i + 1)) == group)) return;
    unsigned* counters = S::counters(c, layer);
#ifndef ADAMK_ABLATE_RELEASE
    thread::fence_release();
#endif
    for (int t = i; t >= 0 && S::consumer_group(task(t)) == group; --t)
      thread::add_relaxed(counters + task(t) / S::T::KSPLIT, 1u);
  }
}

// After task i of a run of any stage: its group's publication, if it ends there.
template <class C>
__device__ void publish_group(Ctx<C>& c, int kind, int layer, int4 run, int i) {
  switch (kind) {
    case GATE_UP: publish_group<C, GATE_UP>(c, layer, run, i); break;
    case LM_HEAD: publish_group<C, LM_HEAD>(c, layer, run, i); break;
    case O: publish_group<C, O>(c, layer, run, i); break;
    case DOWN: publish_group<C, DOWN>(c, layer, run, i); break;
  }
}

}  // namespace adamk::block
