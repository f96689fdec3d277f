// adamk/copy.cuh: 16-byte global -> shared copies through the async copy unit (cp.async,
// sm_80 and later), via CuTe's copy atom; and 16-byte loads that bypass L1.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include <cute/numeric/numeric_types.hpp>

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

}  // namespace adamk::thread
