// adamk/copy.cuh: 16-byte global -> shared copies through the async copy unit (cp.async,
// sm_80 and later), via CuTe's copy atom; 16-byte loads that bypass L1; and, on Hopper, whole
// rows copied by the bulk-copy (TMA) unit.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include <cute/numeric/numeric_types.hpp>
#include <cstdint>

// The bulk-copy unit (cp.async.bulk, sm_90 and later): ADAMK_BULK_COPY is defined where it exists.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define ADAMK_BULK_COPY 1
#endif

namespace adamk::thread {

// One 16-byte asynchronous copy; completes at the next cp_async_wait covering its group.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
  using Atom = cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>;
  Atom::copy(*static_cast<const cute::uint128_t*>(gmem_src), *static_cast<cute::uint128_t*>(smem_dst));
}

__device__ __forceinline__ void cp_async_commit() { cute::cp_async_fence(); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { cute::cp_async_wait<N>(); }

// Data written by other SMs during this launch is read from L2 (.cg), never from a stale L1 line.
__device__ __forceinline__ float4 ld_cg(const float4* p) { return __ldcg(p); }
__device__ __forceinline__ float ld_cg(const float* p) { return __ldcg(p); }

// Hopper: mbarriers in shared memory, and bulk copies (cp.async.bulk) that complete on one. Empty
// where there is no bulk-copy unit; callers use them only where ADAMK_BULK_COPY is defined.
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#ifdef ADAMK_BULK_COPY
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_expect(uint64_t* bar, unsigned bytes) {
#ifdef ADAMK_BULK_COPY
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}
// More bytes for the mbarrier's current phase, without an arrival: a copy that joins a phase whose
// one arrival (mbar_expect) comes later.
__device__ __forceinline__ void mbar_expect_more(uint64_t* bar, unsigned bytes) {
#ifdef ADAMK_BULK_COPY
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
#ifdef ADAMK_BULK_COPY
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
#endif
}
// Before bulk copies overwrite shared memory that this block last wrote with ordinary stores.
__device__ __forceinline__ void fence_shared_for_bulk() {
#ifdef ADAMK_BULK_COPY
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#ifdef ADAMK_BULK_COPY
  asm volatile(
      "{\n .reg .pred done;\n"
      "wait_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra wait_%=;\n}" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
#endif
}

}  // namespace adamk::thread

namespace adamk::block {

// Rows copied from global to shared memory by the bulk-copy unit, completing on one mbarrier.
// The copies hold no registers and are all in flight at once, so a stage's input arrives in one
// L2 round trip however many bytes it is; the stream ring's cp.async groups are not involved.
struct BulkCopy {
  uint64_t* bar;       // the mbarrier (shared memory)
  unsigned phase = 0;  // parity of the copy being waited for

#ifdef ADAMK_BULK_COPY
  // Once per launch, thread 0, before a barrier.
  __device__ void init() const {
    if (threadIdx.x == 0) thread::mbar_init(bar, 1);
  }

  // Thread 0, after a barrier that ended every read of the destination: the next `bytes` bytes of
  // copies complete the current phase.
  __device__ void expect(unsigned bytes) const { thread::mbar_expect(bar, bytes); }

  // Thread 0, before copying global data that other SMs wrote in this launch (generic proxy)
  // and that a counter wait acquired: orders those writes with the copies (async proxy).
  __device__ void fence_source() const { asm volatile("fence.proxy.async.global;" ::: "memory"); }

  // Thread 0: copy `bytes` (a multiple of 16, both addresses 16-byte aligned).
  __device__ void row(void* dst, const void* src, unsigned bytes) const { thread::bulk_copy(dst, src, bytes, bar); }

  // Thread 0, before expect: a copy that lands in the same phase as the rows expected next.
  __device__ void early(void* dst, const void* src, unsigned bytes) const {
    thread::mbar_expect_more(bar, bytes);
    thread::bulk_copy(dst, src, bytes, bar);
  }

  // Every thread: until the expected bytes have landed.
  __device__ void wait() {
    thread::mbar_wait(bar, phase);
    phase ^= 1u;
  }
#endif
};

}  // namespace adamk::block
