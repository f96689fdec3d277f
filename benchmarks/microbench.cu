// Micro-benchmarks that calibrate the cost model and guide the kernel (one process, one card):
//   read    - plain 16-byte loads, several in flight per thread: the card's read bandwidth
//   ring    - the MegaKernel's weight ring (cp.async, STAGES x STAGE_BYTES per block), no compute
//   bulk    - the same ring fed by the bulk copy engine (cp.async.bulk + mbarrier), sm_90 only
//   pingpong- release/acquire counter round trip between two blocks on different SMs
// Build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a benchmarks/microbench.cu -o mb
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__global__ void read_kernel(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  if (acc == 0x12345678) *sink = acc;
}

template <int STAGES, int STAGE_BYTES>
__global__ void __launch_bounds__(256, 1) ring_kernel(const char* __restrict__ p, size_t bytes_per_block, unsigned* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  const char* src = p + blockIdx.x * bytes_per_block;
  const int chunks = bytes_per_block / STAGE_BYTES;
  auto issue = [&](int c) {
    if (c < chunks) {
      unsigned char* dst = smem + (c % STAGES) * STAGE_BYTES;
      for (int v = threadIdx.x; v < STAGE_BYTES / 16; v += 256) {
        unsigned s = (unsigned)__cvta_generic_to_shared(dst + v * 16);
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" ::"r"(s), "l"(src + (size_t)c * STAGE_BYTES + v * 16));
      }
    }
    asm volatile("cp.async.commit_group;");
  };
  for (int c = 0; c < STAGES - 1; ++c) issue(c);
  unsigned acc = 0;
  for (int c = 0; c < chunks; ++c) {
    asm volatile("cp.async.wait_group %0;" ::"n"(STAGES - 2));
    __syncthreads();
    issue(c + STAGES - 1);
    acc ^= reinterpret_cast<const unsigned*>(smem + (c % STAGES) * STAGE_BYTES)[threadIdx.x];
  }
  if (acc == 0x12345678) *sink = acc;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 || !defined(__CUDA_ARCH__)
template <int STAGES, int STAGE_BYTES>
__global__ void __launch_bounds__(256, 1) bulk_kernel(const char* __restrict__ p, size_t bytes_per_block, unsigned* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) unsigned long long bar[STAGES];
  const char* src = p + blockIdx.x * bytes_per_block;
  const int chunks = bytes_per_block / STAGE_BYTES;
  if (threadIdx.x == 0)
    for (int s = 0; s < STAGES; ++s)
      asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"((unsigned)__cvta_generic_to_shared(&bar[s])));
  asm volatile("fence.mbarrier_init.release.cluster;");
  __syncthreads();
  auto issue = [&](int c) {
    if (threadIdx.x == 0 && c < chunks) {
      const int s = c % STAGES;
      unsigned b = (unsigned)__cvta_generic_to_shared(&bar[s]);
      unsigned d = (unsigned)__cvta_generic_to_shared(smem + s * STAGE_BYTES);
      asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(b), "r"(STAGE_BYTES));
      asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                   ::"r"(d), "l"(src + (size_t)c * STAGE_BYTES), "r"(STAGE_BYTES), "r"(b) : "memory");
    }
  };
  for (int c = 0; c < STAGES - 1; ++c) issue(c);
  unsigned acc = 0;
  for (int c = 0; c < chunks; ++c) {
    const int s = c % STAGES;
    const unsigned phase = (c / STAGES) & 1;
    unsigned b = (unsigned)__cvta_generic_to_shared(&bar[s]);
    asm volatile("{ .reg .pred p; W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1; @!p bra W; }" ::"r"(b), "r"(phase));
    acc ^= reinterpret_cast<const unsigned*>(smem + s * STAGE_BYTES)[threadIdx.x];
    __syncthreads();  // everyone is done with the slot refilled next
    issue(c + STAGES - 1);
  }
  if (acc == 0x12345678) *sink = acc;
}
#endif

__global__ void pingpong_kernel(unsigned* flags, int rounds, unsigned long long* out) {
  // block 0 and block 1 bounce a counter `rounds` times.
  if (threadIdx.x != 0) return;
  const int me = blockIdx.x;
  unsigned long long t0 = clock64();
  long long start;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (int r = 0; r < rounds; ++r) {
    const unsigned want = 2 * r + me;
    unsigned v;
    do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flags) : "memory"); } while (v != want);
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flags), "r"(want + 1) : "memory");
  }
  long long end;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(end));
  if (me == 0) out[0] = end - start;
  (void)t0;
}

template <class F>
float time_ms(F launch, int reps = 10) {
  cudaEvent_t a, b;
  cudaEventCreate(&a); cudaEventCreate(&b);
  launch();
  cudaDeviceSynchronize();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a); launch(); cudaEventRecord(b); cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms, a, b); t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  const size_t bytes = (size_t)4 << 30;
  char* buf; unsigned* sink; unsigned long long* out; unsigned* flags;
  CK(cudaMalloc(&buf, bytes)); CK(cudaMalloc(&sink, 4)); CK(cudaMalloc(&out, 8)); CK(cudaMalloc(&flags, 4));
  CK(cudaMemset(buf, 1, bytes));
  printf("device %s, %d SMs\n", prop.name, sms);
  float ms = time_ms([&] { read_kernel<<<sms * 4, 256>>>((const uint4*)buf, bytes / 16, sink); });
  printf("read   : %7.0f GB/s (16-byte loads, 4 in flight per thread)\n", bytes / ms / 1e6);
  const size_t per_block = (bytes / sms) / (1 << 20) * (1 << 20);
#define RING(S, B)                                                                                   \
  {                                                                                                  \
    CK(cudaFuncSetAttribute(ring_kernel<S, B>, cudaFuncAttributeMaxDynamicSharedMemorySize, S * B)); \
    ms = time_ms([&] { ring_kernel<S, B><<<sms, 256, S * B>>>(buf, per_block, sink); });             \
    CK(cudaGetLastError());                                                                          \
    printf("ring   : %7.0f GB/s (cp.async, %d x %d KB)\n", per_block * sms / ms / 1e6, S, B / 1024); \
  }
  RING(6, 32768) RING(12, 16384) RING(3, 65536) RING(2, 32768) RING(4, 16384)
#define BULK(S, B)                                                                                   \
  {                                                                                                  \
    CK(cudaFuncSetAttribute(bulk_kernel<S, B>, cudaFuncAttributeMaxDynamicSharedMemorySize, S * B)); \
    ms = time_ms([&] { bulk_kernel<S, B><<<sms, 256, S * B>>>(buf, per_block, sink); });             \
    CK(cudaGetLastError());                                                                          \
    printf("bulk   : %7.0f GB/s (cp.async.bulk + mbarrier, %d x %d KB)\n", per_block * sms / ms / 1e6, S, B / 1024); \
  }
  if (prop.major >= 9) { BULK(6, 32768) BULK(12, 16384) BULK(3, 65536) BULK(4, 16384) }
  CK(cudaMemset(flags, 0, 4));
  const int rounds = 10000;
  pingpong_kernel<<<2, 32>>>(flags, rounds, out);
  CK(cudaDeviceSynchronize());
  unsigned long long ns;
  CK(cudaMemcpy(&ns, out, 8, cudaMemcpyDeviceToHost));
  printf("sync   : %7.2f us one-way (release store -> acquire load seen on another SM)\n", ns / 1e3 / (2.0 * rounds));
  return 0;
}
