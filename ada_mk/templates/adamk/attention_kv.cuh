// adamk/attention_kv.cuh: an attention task's cached K/V rows copied to shared memory in pieces
// (block scope; Hopper, several sequences: Cfg::ATTN_BUFS > 0).
//
// Piece i of a split, ATTN_PIECE positions from p0 + i * ATTN_PIECE, comes by bulk copy into
// buffer i % ATTN_BUFS, its K rows then its V rows, and completes on that buffer's mbarrier
// (Ctx::kv_bars; Ctx::kv_phase holds the parity each completes next). The buffers lie in the
// staged activations' and the reductions' regions (x, red), which attention does not otherwise use
// (ada_mk.search.plan.Plan.kv_pieces). The first ATTN_BUFS pieces go out before the task waits for
// its inputs (prefetch_kv); each later one once every warp is done with its buffer.
#pragma once
#include "adamk/context.cuh"
#include "adamk/copy.cuh"

namespace adamk::block {

// Buffer of piece i: [2][ATTN_PIECE][HD] bf16, K rows then V rows.
template <class C>
__device__ __nv_bfloat16* kv_buffer(const Ctx<C>& c, int i) {
  return c.x + (i % C::ATTN_BUFS) * 2 * C::ATTN_PIECE * C::HD;
}

// Pieces of the split (0 for an empty split).
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

// A block whose wait ran out of time leaves the kernel: first let the n prefetched pieces land.
template <class C>
__device__ void drain_kv(Ctx<C>& c, int n) {
  for (int i = 0; i < n; ++i) thread::mbar_wait(c.kv_bars + i, (c.kv_phase >> i) & 1u);
}

}  // namespace adamk::block
