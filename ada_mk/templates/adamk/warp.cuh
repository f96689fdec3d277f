// adamk/warp.cuh: reductions across the 32 lanes of a warp (warp scope).
#pragma once

namespace adamk::warp {

// Butterfly sum: every lane ends with the total.
__device__ __forceinline__ float sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Butterfly max: every lane ends with the largest value.
__device__ __forceinline__ float max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Largest value and its index; ties go to the smaller index (torch.argmax keeps the first).
__device__ __forceinline__ void argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
  }
}

}  // namespace adamk::warp
