// adamk/ring.cuh: the stream ring (block scope).
//
// Weights never depend on activations, so the block streams the weight tiles of its whole task
// list, in order, through a ring of C::STAGES shared-memory slots, C::STAGES - 1 chunks ahead of
// the chunk being multiplied. While the block waits on a dependency, the next tasks' weights are
// already in flight. The loader's cursor walks the same compiled schedule as the task loop.
// A chunk arrives by bulk copies on Hopper, else by cp.async; warp 0 issues no copies
// (StreamRing::load_weight_chunk says why). Where the plan says so (Cfg::KV_RING, Plan.kv_ring), the
// ring streams attention tasks' cached K/V rows the same way (load_kv_chunk): they do not depend
// on this step either, and so arrive before the task, not on the QKV-attention-O chain.
// The ring is the only prefetch, and it refills a slot as soon as its chunk is consumed. See
// docs/experiments.md, "Prefetching beyond the ring" and "Holding back QKV refills".
#pragma once
#include "adamk/copy.cuh"
#include "adamk/tasks.cuh"

namespace adamk {

// Where the weight matrix of a stage begins in the packed buffer (elements).
template <class C>
__device__ __forceinline__ size_t weight_offset(int kind, int layer) {
  using Weights = typename C::Weights;
  const size_t base = Weights::LAYER_BASE + static_cast<size_t>(layer) * Weights::LAYER_STRIDE;
  switch (kind) {
    case QKV: return base + Weights::WQKV;
    case O: return base + Weights::WO;
    case GATE_UP: return base + Weights::WGATE_UP;
    case DOWN: return base + Weights::WDOWN;
    default: return Weights::LM_HEAD;
  }
}

namespace block {

// A position in the stream of chunks of one SM's schedule. The run under the cursor is held in
// registers: the loader runs on the critical path of every chunk (each warp passes the ring's
// barrier, then the loading thread issues the next copy before its own multiply), where a global
// load of the run would stand before every copy.
template <class C>
struct ChunkCursor {
  const int4* run;
  const int4* end;
  int4 cur;                 // *run: {kind | layer << 8, first index, stride, count}
  int item = 0, chunk = 0;  // the task within the run, the chunk within the task

  __device__ ChunkCursor(const int4* first, const int4* last) : run(first), end(last) { seek(); }

  __device__ bool done() const { return run == end; }
  __device__ int kind() const { return cur.x & 0xff; }

  // The chunk under the cursor: where its first row begins (its row group's first row in
  // row0; the task's K-split and the chunk's column block give the column).
  template <class T>
  __device__ const __nv_bfloat16* rows(const __nv_bfloat16* weights, int& row0) const {
    const int idx = cur.y + item * cur.z;
    const int tile = idx / T::KSPLIT, split = idx % T::KSPLIT;
    row0 = tile * T::ROWS + chunk / T::KPARTS * T::CHUNK_ROWS;
    return weights + weight_offset<C>(kind(), cur.x >> 8) + static_cast<size_t>(row0) * T::K + split * T::KC +
           chunk % T::KPARTS * T::CHUNK_COLS;
  }

  // The same chunk in tiled weights (Tiling::TILED): each task's chunks lie back to back, CHUNK_BYTES
  // each, in the order the ring takes them (ada_mk.search.layout.Segment.tiling).
  template <class T>
  __device__ const unsigned char* tiled(const __nv_bfloat16* weights) const {
    const int idx = cur.y + item * cur.z;
    return reinterpret_cast<const unsigned char*>(weights + weight_offset<C>(kind(), cur.x >> 8)) +
           (static_cast<size_t>(idx) * T::CHUNKS + chunk) * T::CHUNK_BYTES;
  }

  template <class T>
  __device__ void advance() {
    if (++chunk < T::CHUNKS) return;
    chunk = 0;
    if (++item < cur.w) return;
    item = 0;
    ++run;
    seek();
  }

  // From `run` on, the first run with chunks: weights, or attention's K/V rows (Cfg::KV_RING);
  // not the argmax, not empty.
  __device__ void seek() {
    for (; run != end; ++run) {
      cur = *run;
      if ((kind() != ATTN || C::KV_RING) && kind() != ARGMAX && cur.w > 0) return;
    }
  }
};

template <class C>
struct StreamRing {
  unsigned char* slots;           // C::STAGES slots of C::STAGE_BYTES
  const __nv_bfloat16* weights;   // the packed weight buffer
  ChunkCursor<C> load;            // the next chunk into the ring
  unsigned issued = 0, consumed = 0;
#if defined(ADAMK_BULK_COPY) && !defined(ADAMK_CP_ASYNC_RING)
  // Where the plan says so (Plan.bulk_ring: Hopper), a chunk is one bulk copy (whole rows, or
  // the batched multiply's tiled weights), or one a row when its rows are not back to back (a
  // K-split with one sequence), issued by warp 1 and completing on its slot's mbarrier, instead of
  // 16-byte cp.async copies spread over warps 1-7 (see docs/experiments.md, "Bulk copies fill the
  // ring"). ADAMK_CP_ASYNC_RING builds the cp.async ring everywhere, for comparisons.
  static constexpr bool BULK = C::BULK_RING;
#else
  static constexpr bool BULK = false;
#endif
  uint64_t* bars;                 // BULK: an mbarrier per slot (after the staging's, SMEM_BARRIER)
  const int* positions;           // KV_RING: the sequences' positions and the K/V caches
  __nv_bfloat16* k_cache;
  __nv_bfloat16* v_cache;
  unsigned loaded = 0;            // BULK: chunks copied so far (the rest of `issued` are past the end)

  __device__ StreamRing(unsigned char* smem, const __nv_bfloat16* w, const int4* first, const int4* last,
                        uint64_t* slot_bars, const int* pos, __nv_bfloat16* kc, __nv_bfloat16* vc)
      : slots(smem), weights(w), load(first, last), bars(slot_bars), positions(pos), k_cache(kc), v_cache(vc) {
    if constexpr (BULK) {
      if (threadIdx.x == 0)
        for (int i = 0; i < C::STAGES; ++i) thread::mbar_init(bars + i, 1);
      __syncthreads();
    }
#pragma unroll 1
    for (int i = 0; i < C::STAGES - 1; ++i) issue();
  }

  // Chunks of the task being multiplied: wait for the oldest, refill the slot freed by the
  // previous chunk (every thread passed the barrier, so nobody still reads it).
  __device__ const __nv_bfloat16* next() {
    if constexpr (BULK) thread::mbar_wait(bars + consumed % C::STAGES, (consumed / C::STAGES) & 1);
    else thread::cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    const unsigned char* p = slots + (consumed % C::STAGES) * C::STAGE_BYTES;
    ++consumed;
    issue();
    return reinterpret_cast<const __nv_bfloat16*>(p);
  }

  __device__ void drain() {
    if constexpr (BULK)
      for (unsigned i = consumed; i < loaded; ++i) thread::mbar_wait(bars + i % C::STAGES, (i / C::STAGES) & 1);
    else thread::cp_async_wait<0>();
  }

 private:
  // Cfg::KV_RING: slot `chunk` of the attention task under the cursor (its AttnSplit): the cached
  // rows of positions [first, first + KV_PIECE) within the split's [p0, p1), K then V; none past
  // p1 (the mbarrier's phase then completes with no bytes). Rows before pos were written by earlier
  // steps; pos's row is stale here, and the task takes this step's k and v from its own shared
  // memory instead. Thread 32, as every ring copy.
  __device__ void load_kv_chunk(unsigned char* dst) {
    if constexpr (C::KV_RING) {
      constexpr int HD = C::HD, P = C::KV_PIECE;
      if (threadIdx.x == 32) {
        const AttnSplit<C> s(positions, k_cache, v_cache, load.cur.x >> 8, load.cur.y + load.item * load.cur.z);
        const int first = s.p0 + load.chunk * P, rows = max(0, min(P, s.p1 - first));
        uint64_t* bar = bars + issued % C::STAGES;
        thread::mbar_expect(bar, 2 * rows * HD * 2);
        if (rows > 0) {
          thread::bulk_copy(dst, s.kc + static_cast<size_t>(first) * HD, rows * HD * 2, bar);
          thread::bulk_copy(dst + P * HD * 2, s.vc + static_cast<size_t>(first) * HD, rows * HD * 2, bar);
        }
      }
      ++loaded;
      load.template advance<KvSlots<C>>();
    }
  }

  template <class T>
  __device__ void load_weight_chunk(unsigned char* dst) {
    static_assert(T::CHUNK_BYTES <= C::STAGE_BYTES, "a chunk fits its slot");
    if constexpr (BULK) {
      // Warp 1. Thread 32 tells the slot's mbarrier how many bytes come (none: the phase completes
      // at once). Tiled weights hold the chunk as its slot does: one copy (the last tile's rows
      // past the matrix are zeros there). Otherwise a chunk of whole rows is one copy, else lane r
      // copies row r (a K-split chunk with one sequence); the last tile's chunks may end past the
      // matrix, or lie past it.
      uint64_t* bar = bars + issued % C::STAGES;
      if constexpr (T::TILED) {
        if (threadIdx.x == 32) {
          thread::mbar_expect(bar, T::CHUNK_BYTES);
          thread::bulk_copy(dst, load.template tiled<T>(weights), T::CHUNK_BYTES, bar);
        }
      } else {
        int row0;
        const __nv_bfloat16* src = load.template rows<T>(weights, row0);
        if constexpr (T::CHUNK_COLS == T::K) {
          if (threadIdx.x == 32) {
            const int rows = max(0, min(T::CHUNK_ROWS, T::N - row0));
            thread::mbar_expect(bar, rows * T::CHUNK_COLS * 2);
            if (rows > 0) thread::bulk_copy(dst, src, rows * T::K * 2, bar);
          }
        } else if (threadIdx.x >> 5 == 1) {
          static_assert(T::CHUNK_ROWS <= 32, "a lane per row");
          const int lane = threadIdx.x & 31, rows = max(0, min(T::CHUNK_ROWS, T::N - row0));
          if (lane == 0) thread::mbar_expect(bar, rows * T::CHUNK_COLS * 2);
          __syncwarp();
          if (lane < rows)
            thread::bulk_copy(dst + tile_offset<C, T>(lane, 0) * 2, src + static_cast<size_t>(lane) * T::K,
                              T::CHUNK_COLS * 2, bar);
        }
      }
      ++loaded;
      load.template advance<T>();
      return;
    }
    // Warps 1.. issue the copies, warp 0 none: its thread 0 publishes the block's results
    // (release add, arrival atomic), and a release waits for the warp's outstanding reads, which
    // would include ring chunks still queued behind the whole card's weight traffic (see
    // docs/experiments.md, "Warp 0 issues no ring copies").
    // Tiled weights (8-bit weights, or an ADAMK_CP_ASYNC_RING build on Hopper) are copied as they lie.
    constexpr int LOADERS = C::THREADS - 32;
    if constexpr (T::TILED) {
      const unsigned char* src = load.template tiled<T>(weights);
#pragma unroll 4
      for (int v = static_cast<int>(threadIdx.x) - 32; v >= 0 && v < T::CHUNK_BYTES / 16; v += LOADERS)
        thread::cp_async_16(dst + v * 16, src + v * 16);
    } else {
      int row0;
      const __nv_bfloat16* src = load.template rows<T>(weights, row0);
#pragma unroll 4
      for (int v = static_cast<int>(threadIdx.x) - 32; v >= 0 && v < T::CHUNK_ROWS * T::CHUNK_VEC; v += LOADERS) {
        const int r = v / T::CHUNK_VEC, c = v % T::CHUNK_VEC;
        if (row0 + r < T::N)
          thread::cp_async_16(dst + tile_offset<C, T>(r, c * 8) * 2, src + static_cast<size_t>(r) * T::K + c * 8);
      }
    }
    load.template advance<T>();
  }

  // Issue the next chunk of the schedule into the next slot; one commit group per chunk, empty
  // past the end of the schedule, so group i always holds chunk i.
  __device__ void issue() {
    if (!load.done()) {
      unsigned char* dst = slots + (issued % C::STAGES) * C::STAGE_BYTES;
      switch (load.kind()) {
        case QKV: load_weight_chunk<typename C::Qkv>(dst); break;
        case O: load_weight_chunk<typename C::O>(dst); break;
        case GATE_UP: load_weight_chunk<typename C::GateUp>(dst); break;
        case DOWN: load_weight_chunk<typename C::Down>(dst); break;
        case LM_HEAD: load_weight_chunk<typename C::LmHead>(dst); break;
        case ATTN: load_kv_chunk(dst); break;
      }
    }
    ++issued;
    if constexpr (!BULK) thread::cp_async_commit();
  }
};

}  // namespace block
}  // namespace adamk
