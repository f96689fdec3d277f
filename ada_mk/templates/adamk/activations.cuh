// adamk/activations.cuh: reading the residual stream and staging the activation chunk that a
// linear task multiplies into shared memory, as bf16 [B][kc] (f16 for 8-bit weights, X_F16)
// (block scope; rows laid out by x_offset, adamk/tasks.cuh).
//
// Each stage's input is rebuilt by its consumer from what the producers wrote: RMSNorm of the
// residual stream that the O / down tiles published (QKV, gate/up, LM head), attention's combined
// output (O projection), SiLU(gate) * up that the gate/up tasks stored (down projection; with a
// K-split gate/up, computed here from the partial sums). Values are rounded to bf16 wherever the
// bf16 reference model rounds them, so both compute the same function.
//
// These reads come from L2 and sit on the critical path between two stages. On Hopper the bf16
// rows a stage needs (the stream's chunk, attention's output, SiLU(gate) * up) are bulk copies
// (adamk/copy.cuh), all in flight at once and holding no registers; RMSNorm then scales them in
// place. Elsewhere, and for the float partials of gate/up, every loop issues all of its loads
// before it uses any (unrolled, 16-byte vectors): latency is paid once, not per element.
#pragma once
#include "adamk/bf16.cuh"
#include "adamk/context.cuh"
#include "adamk/copy.cuh"
#include "adamk/warp.cuh"

namespace adamk {

// The residual stream at one point of the step: the embedding rows (entering layer 0), or the
// bf16 [B][H] stream that the O or down tiles published (adamk/linear_stages.cuh, finish_stream) with
// their sums of squares [tiles][B].
template <class C>
struct Stream {
  const __nv_bfloat16* x;  // nullptr: the embedding
  const float* sumsq;
  int tiles;
  const __nv_bfloat16* embed;
  const int* tokens;

  __device__ const __nv_bfloat16* row(int b) const {
    return x != nullptr ? x + b * C::H : embed + static_cast<size_t>(tokens[b]) * C::H;
  }

  // Four consecutive elements (8 bytes). Written by other SMs during this launch: read from L2.
  __device__ uint2 load4(int b, int i) const { return __ldcg(reinterpret_cast<const uint2*>(row(b) + i)); }

  __device__ float value(int b, int i) const { return __bfloat162float(row(b)[i]); }
};

// The stream entering `layer` (layer == L: entering the final norm).
template <class C>
__device__ Stream<C> stream_in(const Ctx<C>& c, int layer) {
  if (layer == 0) return {nullptr, nullptr, 0, c.a.weights + C::Weights::EMBED, c.a.tokens};
  return {reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::DOWN_STREAM, layer - 1)),
          c.scratch(C::Scratch::DOWN_SUMSQ, layer - 1), C::Down::TILES, nullptr, nullptr};
}

// The stream between attention and MLP of `layer`.
template <class C>
__device__ Stream<C> stream_mid(const Ctx<C>& c, int layer) {
  return {reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::Scratch::O_STREAM, layer)),
          c.scratch(C::Scratch::O_SUMSQ, layer), C::O::TILES, nullptr, nullptr};
}

// Where the O (KIND == O) or down projection of `layer` publishes the stream.
template <class C, int KIND>
__device__ __nv_bfloat16* stream_out(const Ctx<C>& c, int layer) {
  return reinterpret_cast<__nv_bfloat16*>(c.scratch_w(KIND == O ? C::Scratch::O_STREAM : C::Scratch::DOWN_STREAM, layer));
}

// K-split O or down projections only: their float partials [split][B][H], and the arrival
// counters that elect the split that sums them.
template <class C, int KIND>
__device__ float* stream_part(const Ctx<C>& c, int layer) {
  if constexpr (KIND == O) return c.scratch_w(C::Scratch::O_PART, layer);
  else return c.scratch_w(C::Scratch::DOWN_PART, layer);
}
template <class C, int KIND>
__device__ unsigned* stream_arrivals(const Ctx<C>& c, int layer) {
  if constexpr (KIND == O) return c.counter(C::Counters::O_ARRIVE, layer);
  else return c.counter(C::Counters::DOWN_ARRIVE, layer);
}

// The staged activations' element format for tiling T: bf16, or f16 where the stage multiplies
// 8-bit codes (Tiling::Q8: their MMAs take f16, adamk/mma.cuh). Each value is first rounded to bf16
// where the reference rounds it, then converted (thread::bf16x2_to_f16x2: exact within f16's range).
template <class T>
constexpr bool X_F16 = T::Q8;

namespace thread {

// A word of two bf16 activations as tiling T stages it.
template <class T>
__device__ __forceinline__ uint32_t staged_word(uint32_t w) {
  if constexpr (X_F16<T>) return bf16x2_to_f16x2(w);
  else return w;
}

}  // namespace thread

namespace block {

// misc[WARPS * B + b] = rsqrt(mean(v^2) + eps) of each sequence's stream, from the tiles' sums
// of squares that came with a published stream.
template <class C>
__device__ void published_rstd(Ctx<C>& c, const Stream<C>& s) {
  constexpr int B = C::B;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp < B) {
    float t = 0.f;
#pragma unroll 4  // four loads in flight per lane
    for (int i = lane; i < s.tiles; i += 32) t += thread::ld_cg(s.sumsq + i * B + warp);
    t = warp::sum(t);
    if (lane == 0) c.misc[WARPS * B + warp] = rsqrtf(t / C::H + C::EPS);
  }
  __syncthreads();
}

// The same for the embedding rows entering layer 0, summed here: each iteration has its B
// sequences' loads in flight together. The loop is not unrolled: holding every iteration's loads
// at once spills registers at batch 8, for a function that runs once per step.
template <class C>
__device__ void embedding_rstd(Ctx<C>& c, const Stream<C>& s) {
  constexpr int B = C::B, ITER = (C::H / 4 + C::THREADS - 1) / C::THREADS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float ss[B] = {};
#pragma unroll 1
  for (int it = 0; it < ITER; ++it) {
    const int i = (threadIdx.x + it * C::THREADS) * 4;
    if (i >= C::H) break;
    uint2 v[B];
#pragma unroll
    for (int b = 0; b < B; ++b) v[b] = s.load4(b, i);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float f[4];
      thread::unpack4(v[b], f);
      ss[b] += f[0] * f[0] + f[1] * f[1] + f[2] * f[2] + f[3] * f[3];
    }
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
    ss[b] = warp::sum(ss[b]);
    if (lane == 0) c.misc[warp * B + b] = ss[b];
  }
  __syncthreads();
  if (threadIdx.x < B) {
    float t = 0.f;
    for (int w = 0; w < WARPS; ++w) t += c.misc[w * B + threadIdx.x];
    c.misc[WARPS * B + threadIdx.x] = rsqrtf(t / C::H + C::EPS);
  }
  __syncthreads();
}

#ifdef ADAMK_BULK_COPY
// Thread 0 starts the copies of columns [k0, k0 + KC) of each sequence's bf16 row (row(b)) into
// x; BulkCopy::wait ends them.
template <class C, class T, class Row>
__device__ void copy_rows(Ctx<C>& c, Row row, int k0) {
  if (threadIdx.x == 0) {
    c.bulk.fence_source();
    c.bulk.expect(C::B * T::KC * 2);
#pragma unroll 1  // once per staging: small code over unrolled copies
    for (int b = 0; b < C::B; ++b) c.bulk.row(c.x + x_offset<C, T>(b, 0), row(b) + k0, T::KC * 2);
  }
}
#endif

#ifdef ADAMK_BULK_COPY
// Before a QKV, gate/up or LM head task that will stage its input waits for it: thread 0 copies
// the RMSNorm weights of its K-chunk (gamma) into the attention scratch, free between attention
// tasks and before the LM head's multiply (ada_mk.search.plan.Plan.attn_bytes makes room). Gamma
// depends on nothing of this step, so the copy lands during the wait, where a load after it
// would stand one DRAM round trip behind the card's whole weight stream (see
// docs/experiments.md, "RMSNorm weights copied before the wait"). It completes in the phase of
// the staging barrier that the stream's rows complete (copy_rows). Returns whether it started one.
template <class C, class T>
__device__ bool prefetch_gamma(Ctx<C>& c, int key, const __nv_bfloat16* gamma, int split) {
#ifdef ADAMK_ABLATE_STAGING
  return false;
#endif
  if (c.staged == key) return false;  // x holds the chunk already: nothing is staged
  __syncthreads();                    // the previous task is done with the attention scratch
  if (threadIdx.x == 0) {
    thread::fence_shared_for_bulk();
    c.bulk.early(c.attn, gamma + split * T::KC, T::KC * 2);
  }
  return true;
}
#endif

// x[b][k] = bf16(gamma[k0 + k] * bf16(v * rsqrt(mean(v^2) + eps))), as HF's RMSNorm, reading
// only the chunk's columns of the stream. On Hopper gamma came into the attention scratch before
// the task's wait (prefetch_gamma) and lands with the rows; elsewhere a published stream's chunk
// and gamma are loaded before rstd is summed from the tiles, so both round trips to L2 overlap.
template <class C, class T>
__device__ void stage_rmsnorm(Ctx<C>& c, const Stream<C>& s, const __nv_bfloat16* gamma, int k0) {
  constexpr int B = C::B;
#ifdef ADAMK_BULK_COPY
  copy_rows<C, T>(c, [&](int b) { return s.row(b); }, k0);
  if (s.x == nullptr) embedding_rstd<C>(c, s);
  else published_rstd<C>(c, s);
  c.bulk.wait();
  // One 16-byte vector of one sequence an iteration, in a loop: this code runs once per staging,
  // and unrolled (16 vectors a thread for Llama-3-8B at batch 8) it misses the instruction cache
  // all the way through.
#pragma unroll 2
  for (int e = threadIdx.x; e < B * T::VEC; e += C::THREADS) {
    const int b = e / T::VEC, v = e % T::VEC;
    const float rstd = c.misc[WARPS * B + b];
    const uint4 g = reinterpret_cast<const uint4*>(c.attn)[v];
    uint4* p = reinterpret_cast<uint4*>(c.x + x_offset<C, T>(b, v * 8));
    const uint4 xv = *p;
    const auto norm = [&](uint32_t x2, uint32_t g2) { return thread::staged_word<T>(thread::rmsnorm2(x2, g2, rstd)); };
    *p = make_uint4(norm(xv.x, g.x), norm(xv.y, g.y), norm(xv.z, g.z), norm(xv.w, g.w));
  }
#else
  constexpr int NK = T::KC / 4, PER = (NK + C::THREADS - 1) / C::THREADS;
  if (s.x == nullptr) embedding_rstd<C>(c, s);
  uint2 v[PER][B], g[PER];
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int k = (threadIdx.x + q * C::THREADS) * 4;
    if (k < T::KC) {
      g[q] = __ldg(reinterpret_cast<const uint2*>(gamma + k0 + k));
#pragma unroll
      for (int b = 0; b < B; ++b) v[q][b] = s.load4(b, k0 + k);
    }
  }
  if (s.x != nullptr) published_rstd<C>(c, s);
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int k = (threadIdx.x + q * C::THREADS) * 4;
    if (k < T::KC) {
      float gf[4];
      thread::unpack4(g[q], gf);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const float rstd = c.misc[WARPS * B + b];
        float f[4];
        thread::unpack4(v[q][b], f);
#pragma unroll
        for (int t = 0; t < 4; ++t) f[t] = gf[t] * thread::bf16_round(f[t] * rstd);
        const uint2 w = thread::pack4(f);
        *reinterpret_cast<uint2*>(c.x + x_offset<C, T>(b, k)) = make_uint2(thread::staged_word<T>(w.x), thread::staged_word<T>(w.y));
      }
    }
  }
#endif
}

// x[b][k] = src[b * stride + k0 + k]: a bf16 vector that its producers finished, copied as it is
// (attention's combined output for the O projection; SiLU(gate) * up for the down projection).
template <class C, class T>
__device__ void stage_copy(Ctx<C>& c, const __nv_bfloat16* src, int stride, int k0) {
#ifdef ADAMK_BULK_COPY
  copy_rows<C, T>(c, [&](int b) { return src + b * stride; }, k0);
  c.bulk.wait();
  if constexpr (X_F16<T>) {  // converted in place, each thread its own vectors (the ring's barrier orders them)
#pragma unroll 2
    for (int e = threadIdx.x; e < C::B * T::VEC; e += C::THREADS) {
      uint4* p = reinterpret_cast<uint4*>(c.x + x_offset<C, T>(e / T::VEC, e % T::VEC * 8));
      const uint4 v = *p;
      *p = make_uint4(thread::staged_word<T>(v.x), thread::staged_word<T>(v.y), thread::staged_word<T>(v.z),
                      thread::staged_word<T>(v.w));
    }
  }
#else
  constexpr int KC = T::KC, N8 = C::B * KC / 8, PER = (N8 + C::THREADS - 1) / C::THREADS;  // 16-byte vectors
  uint4 v[PER];  // all loads issued at once
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int e = threadIdx.x + q * C::THREADS, b = e / (KC / 8), k = (e % (KC / 8)) * 8;
    if (e < N8) v[q] = __ldcg(reinterpret_cast<const uint4*>(src + b * stride + k0 + k));
  }
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int e = threadIdx.x + q * C::THREADS, b = e / (KC / 8), k = (e % (KC / 8)) * 8;
    if (e < N8)
      *reinterpret_cast<uint4*>(c.x + x_offset<C, T>(b, k)) =
          make_uint4(thread::staged_word<T>(v[q].x), thread::staged_word<T>(v[q].y), thread::staged_word<T>(v[q].z),
                     thread::staged_word<T>(v[q].w));
  }
#endif
}

// K-split gate/up only: x[b][k] = bf16(bf16(silu(gate)) * up) for intermediate column k0 + k, as
// HF's MLP, from the sums of the gate/up partials (rows interleaved: gate k, up k adjacent).
template <class C, class T>
__device__ void stage_silu_mul(Ctx<C>& c, int layer, int k0) {
  // Up to 8 vectors (2 columns of gate and up each) per thread in flight at once.
  constexpr int B = C::B, KC = T::KC, I = C::I, S = C::GateUp::KSPLIT, N2 = B * KC / 2;
  constexpr int PER = (N2 + C::THREADS - 1) / C::THREADS, UNROLL = PER < 8 ? PER : 8;
  const float* part = c.scratch(C::Scratch::GATE_UP_PART, layer);
  for (int base = threadIdx.x; base < N2; base += C::THREADS * UNROLL) {
    float4 gu[UNROLL];  // gate k, up k, gate k + 1, up k + 1
#pragma unroll
    for (int q = 0; q < UNROLL; ++q) {
      const int e = base + q * C::THREADS;
      gu[q] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (e < N2) {
        const int b = e / (KC / 2), k = k0 + (e % (KC / 2)) * 2;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float4 p = thread::ld_cg(reinterpret_cast<const float4*>(part + (s * B + b) * 2 * I + 2 * k));
          gu[q].x += p.x; gu[q].y += p.y; gu[q].z += p.z; gu[q].w += p.w;
        }
      }
    }
#pragma unroll
    for (int q = 0; q < UNROLL; ++q) {
      const int e = base + q * C::THREADS;
      if (e >= N2) continue;
      const int b = e / (KC / 2), k = (e % (KC / 2)) * 2;
      const float h0 = thread::silu_bf16(thread::bf16_round(gu[q].x)) * thread::bf16_round(gu[q].y);
      const float h1 = thread::silu_bf16(thread::bf16_round(gu[q].z)) * thread::bf16_round(gu[q].w);
      *reinterpret_cast<uint32_t*>(c.x + x_offset<C, T>(b, k)) = thread::staged_word<T>(thread::pack2(h0, h1));
    }
  }
}

}  // namespace block
}  // namespace adamk
