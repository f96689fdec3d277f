// adamk/weights.cuh: the weight ring (block scope).
//
// Weights never depend on activations, so the block streams the weight tiles of its whole task
// list, in order, through a ring of C::STAGES shared-memory slots, C::STAGES - 1 chunks ahead of
// the chunk being multiplied. While the block waits on a dependency, the next tasks' weights are
// already in flight. The loader walks the same compiled schedule as the task loop.
#pragma once
#include "adamk/copy.cuh"
#include "adamk/tasks.cuh"

namespace adamk {

// Where the weight matrix of a stage begins in the packed buffer (elements).
template <class C>
__device__ __forceinline__ size_t weight_offset(int kind, int layer) {
  using W = typename C::W;
  const size_t base = W::LAYER_BASE + static_cast<size_t>(layer) * W::LAYER_STRIDE;
  switch (kind) {
    case QKV: return base + W::WQKV;
    case O: return base + W::WO;
    case GATE_UP: return base + W::WGATE_UP;
    case DOWN: return base + W::WDOWN;
    default: return W::LM_HEAD;
  }
}

namespace block {

template <class C>
struct WeightRing {
  unsigned char* slots;  // C::STAGES slots of C::STAGE_BYTES
  const __nv_bfloat16* weights;  // the packed weight buffer
  const int4* run;       // loader cursor: current run of the schedule,
  const int4* end;
  int item, chunk;       // the task within the run, the chunk within the task
  unsigned issued = 0, consumed = 0;

  __device__ WeightRing(unsigned char* smem, const __nv_bfloat16* w, const int4* first, const int4* last)
      : slots(smem), weights(w), run(first), end(last), item(0), chunk(0) {
    skip_weightless();
#pragma unroll 1
    for (int i = 0; i < C::STAGES - 1; ++i) issue();
  }

  // Chunks of the task being multiplied: wait for the oldest, refill the slot freed by the
  // previous chunk (every thread passed the barrier, so nobody still reads it).
  __device__ const __nv_bfloat16* next() {
    thread::cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    const unsigned char* p = slots + (consumed % C::STAGES) * C::STAGE_BYTES;
    ++consumed;
    issue();
    return reinterpret_cast<const __nv_bfloat16*>(p);
  }

  __device__ void drain() { thread::cp_async_wait<0>(); }

 private:
  __device__ static bool has_weights(int kind) { return kind != ATTN && kind != ARGMAX; }

  // Move the cursor past runs without weight chunks (attention, argmax) and finished runs.
  __device__ void skip_weightless() {
    while (run != end && (!has_weights(run->x & 0xff) || item >= run->w)) {
      ++run;
      item = 0;
      chunk = 0;
    }
  }

  template <class T>
  __device__ void load_chunk(const __nv_bfloat16* w, int idx, unsigned char* dst) {
    const int tile = idx / T::KSPLIT, split = idx % T::KSPLIT;
    const int row0 = tile * T::ROWS + chunk * T::CHUNK_ROWS;
    const __nv_bfloat16* src = w + static_cast<size_t>(row0) * T::K + split * T::KC;
#pragma unroll 4
    for (int v = threadIdx.x; v < T::CHUNK_ROWS * T::VEC; v += C::THREADS) {
      const int r = v / T::VEC, c = v % T::VEC;
      if (row0 + r < T::N)
        thread::cp_async_16(dst + (r * T::KC + c * 8) * 2, src + static_cast<size_t>(r) * T::K + c * 8);
    }
    if (++chunk == T::CHUNKS) {
      chunk = 0;
      ++item;
    }
  }

  // Issue the next chunk of the schedule into the next slot; one commit group per chunk, empty
  // past the end of the schedule, so group i always holds chunk i.
  __device__ void issue() {
    if (run != end) {
      unsigned char* dst = slots + (issued % C::STAGES) * C::STAGE_BYTES;
      const int kind = run->x & 0xff, layer = run->x >> 8, idx = run->y + item * run->z;
      const __nv_bfloat16* w = weights + weight_offset<C>(kind, layer);
      switch (kind) {
        case QKV: load_chunk<typename C::Qkv>(w, idx, dst); break;
        case O: load_chunk<typename C::O>(w, idx, dst); break;
        case GATE_UP: load_chunk<typename C::GateUp>(w, idx, dst); break;
        case DOWN: load_chunk<typename C::Down>(w, idx, dst); break;
        case LM_HEAD: load_chunk<typename C::LmHead>(w, idx, dst); break;
      }
      skip_weightless();
    }
    ++issued;
    thread::cp_async_commit();
  }
};

}  // namespace block
}  // namespace adamk
