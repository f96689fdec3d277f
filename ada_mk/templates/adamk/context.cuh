// adamk/context.cuh: what one block carries from task to task, and where the buffers the plan
// laid out begin.
#pragma once
#include "adamk/tasks.cuh"
#include "adamk/ring.cuh"

namespace adamk {

template <class C>
struct Ctx {
  Args a;
  block::StreamRing<C> ring;
  __nv_bfloat16* x;    // staged activation chunk, bf16 [B][kc] (f16 bits for 8-bit stages: X_F16)
  float* red;          // per-warp partial dot products
  float* attn;         // attention scratch
  float* misc;         // block reductions: [WARPS][B] + [B]
  block::BulkCopy bulk;  // copies staging x (Hopper)
  int staged = -1;     // which activation chunk x holds (kind, layer, split), -1: none
  int waited = -1;     // the inputs the block last waited for (kind, layer, which part), -1: none
  uint64_t* kv_bars = nullptr;  // batched attention: an mbarrier per K/V buffer (Cfg::ATTN_BUFS)
  unsigned kv_phase = 0;        // the parity each K/V buffer's mbarrier completes next, bit per buffer
  unsigned epoch = 0;  // this step's number: counters reach per_step * epoch when it is done
#ifdef ADAMK_PROFILE
  unsigned long long t_staged = 0;  // when the current task's input was staged
#endif

  __device__ const float* scratch(size_t off, int layer) const {
    return a.scratch + C::Scratch::LAYER_BASE + static_cast<size_t>(layer) * C::Scratch::LAYER_STRIDE + off;
  }
  __device__ float* scratch_w(size_t off, int layer) const {
    return a.scratch + C::Scratch::LAYER_BASE + static_cast<size_t>(layer) * C::Scratch::LAYER_STRIDE + off;
  }
  __device__ unsigned* counter(size_t off, int layer) const {
    return a.counters + C::Counters::LAYER_BASE + static_cast<size_t>(layer) * C::Counters::LAYER_STRIDE + off;
  }
  __device__ const __nv_bfloat16* weight(size_t off, int layer) const {
    return a.weights + C::Weights::LAYER_BASE + static_cast<size_t>(layer) * C::Weights::LAYER_STRIDE + off;
  }
};

}  // namespace adamk
