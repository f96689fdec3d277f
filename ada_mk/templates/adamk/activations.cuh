// adamk/activations.cuh: reading the residual stream and staging the activation chunk that a
// linear task multiplies into shared memory, as bf16 [B][kc] (block scope).
//
// Each stage's input is rebuilt by its consumer from the producers' partial sums: RMSNorm of the
// residual stream (QKV, gate/up, LM head), attention's combined output (O projection),
// SiLU(gate) * up (down projection). Values are rounded to bf16 wherever the
// bf16 reference model rounds them, so both compute the same function.
//
// These reads come from L2 and sit on the critical path between two stages, so every loop issues
// all of its loads before it uses any (unrolled, 16-byte vectors): latency is paid once, not per
// element.
#pragma once
#include "adamk/bf16.cuh"
#include "adamk/context.cuh"
#include "adamk/copy.cuh"
#include "adamk/warp.cuh"

namespace adamk {

// The residual stream at one point of the step: the embedding rows (entering layer 0) or the
// sum of a stage's K-split partials [nsplit][B][H] (the residual was added into split 0).
template <class C>
struct Stream {
  const float* part;  // nullptr: the embedding
  int nsplit;
  const __nv_bfloat16* embed;
  const int* tokens;

  // Four consecutive elements, rounded to bf16 (the stream is a bf16 tensor in the reference).
  __device__ void load4(int b, int i, float (&v)[4]) const {
    if (part == nullptr) {
      const uint2 raw = __ldg(reinterpret_cast<const uint2*>(embed + static_cast<size_t>(tokens[b]) * C::H + i));
      v[0] = __uint_as_float(raw.x << 16); v[1] = __uint_as_float(raw.x & 0xffff0000u);
      v[2] = __uint_as_float(raw.y << 16); v[3] = __uint_as_float(raw.y & 0xffff0000u);
      return;
    }
    float4 s = thread::ld_cg(reinterpret_cast<const float4*>(part + b * C::H + i));
    for (int k = 1; k < nsplit; ++k) {
      const float4 t = thread::ld_cg(reinterpret_cast<const float4*>(part + (k * C::B + b) * C::H + i));
      s.x += t.x; s.y += t.y; s.z += t.z; s.w += t.w;
    }
    v[0] = thread::bf16_round(s.x); v[1] = thread::bf16_round(s.y);
    v[2] = thread::bf16_round(s.z); v[3] = thread::bf16_round(s.w);
  }

  __device__ float value(int b, int i) const {
    if (part == nullptr) return __bfloat162float(embed[static_cast<size_t>(tokens[b]) * C::H + i]);
    float s = 0.f;
    for (int k = 0; k < nsplit; ++k) s += thread::ld_cg(part + (k * C::B + b) * C::H + i);
    return thread::bf16_round(s);
  }
};

// The stream entering `layer` (layer == L: entering the final norm).
template <class C>
__device__ Stream<C> stream_in(const Ctx<C>& c, int layer) {
  if (layer == 0) return {nullptr, 1, c.a.weights + C::W::EMBED, c.a.tokens};
  return {c.scratch(C::S::DOWN_PART, layer - 1), C::Down::KSPLIT, nullptr, nullptr};
}

// The stream between attention and MLP of `layer`.
template <class C>
__device__ Stream<C> stream_mid(const Ctx<C>& c, int layer) {
  return {c.scratch(C::S::O_PART, layer), C::O::KSPLIT, nullptr, nullptr};
}

namespace block {

// x[b][k] = bf16(gamma[k0 + k] * bf16(v * rsqrt(mean(v^2) + eps))), as HF's RMSNorm.
// One round trip to L2: the stream and the chunk's gamma are all loaded before any is used, the
// stream kept in registers (bf16, exact: the stream is rounded to bf16) until rstd is known.
template <class C, int KC>
__device__ void stage_rmsnorm(Ctx<C>& c, const Stream<C>& s, const __nv_bfloat16* gamma, int k0) {
  constexpr int B = C::B, ITER = (C::H / 4 + C::THREADS - 1) / C::THREADS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint2 v[ITER][B], g[ITER];
#pragma unroll
  for (int it = 0; it < ITER; ++it) {
    const int i = (threadIdx.x + it * C::THREADS) * 4;
    if (i < C::H) {
#pragma unroll
      for (int b = 0; b < B; ++b) {
        float f[4];
        s.load4(b, i, f);
        v[it][b] = thread::pack4(f);
      }
      if (i >= k0 && i < k0 + KC) g[it] = __ldg(reinterpret_cast<const uint2*>(gamma + i));
    }
  }
  float ss[B] = {};
#pragma unroll
  for (int it = 0; it < ITER; ++it) {
    if ((threadIdx.x + it * C::THREADS) * 4 < C::H) {
#pragma unroll
      for (int b = 0; b < B; ++b) {
        float f[4];
        thread::unpack4(v[it][b], f);
        ss[b] += f[0] * f[0] + f[1] * f[1] + f[2] * f[2] + f[3] * f[3];
      }
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
    for (int w = 0; w < C::THREADS / 32; ++w) t += c.misc[w * B + threadIdx.x];
    c.misc[(C::THREADS / 32) * B + threadIdx.x] = rsqrtf(t / C::H + C::EPS);
  }
  __syncthreads();
#pragma unroll
  for (int it = 0; it < ITER; ++it) {
    const int i = (threadIdx.x + it * C::THREADS) * 4;
    if (i < C::H && i >= k0 && i < k0 + KC) {
      float gf[4];
      thread::unpack4(g[it], gf);
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const float rstd = c.misc[(C::THREADS / 32) * B + b];
        float f[4];
        thread::unpack4(v[it][b], f);
#pragma unroll
        for (int t = 0; t < 4; ++t) f[t] = gf[t] * thread::bf16_round(f[t] * rstd);
        *reinterpret_cast<uint2*>(c.x + b * KC + i - k0) = thread::pack4(f);
      }
    }
  }
}

// x[b][k] = attention output of column k0 + k: a copy of the bf16 output that the last split
// of each attention group combined (adamk/attention.cuh), all loads issued at once.
template <class C, int KC>
__device__ void stage_attention(Ctx<C>& c, int layer, int k0) {
  constexpr int N8 = C::B * KC / 8, PER = (N8 + C::THREADS - 1) / C::THREADS;  // 16-byte vectors
  const __nv_bfloat16* out = reinterpret_cast<const __nv_bfloat16*>(c.scratch(C::S::ATTN_OUT, layer));
  uint4 v[PER];
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int e = threadIdx.x + q * C::THREADS, b = e / (KC / 8), k = (e % (KC / 8)) * 8;
    if (e < N8) v[q] = __ldcg(reinterpret_cast<const uint4*>(out + b * C::Q + k0 + k));
  }
#pragma unroll
  for (int q = 0; q < PER; ++q) {
    const int e = threadIdx.x + q * C::THREADS, b = e / (KC / 8), k = (e % (KC / 8)) * 8;
    if (e < N8) *reinterpret_cast<uint4*>(c.x + b * KC + k) = v[q];
  }
}

// x[b][k] = bf16(bf16(silu(gate)) * up) for intermediate column k0 + k, as HF's MLP. With a
// K-split gate/up stage this sums its partials first; unsplit, SiLU was applied by the producer.
template <class C, int KC>
__device__ void stage_silu_mul(Ctx<C>& c, int layer, int k0) {
  // Up to 8 vectors of gate and of up per thread in flight at once (more spill registers).
  constexpr int B = C::B, I = C::I, S = C::GateUp::KSPLIT, N4 = B * KC / 4;
  constexpr int PER = (N4 + C::THREADS - 1) / C::THREADS, UNROLL = PER < 8 ? PER : 8;
  const float* part = c.scratch(C::S::GATE_UP_PART, layer);
  for (int base = threadIdx.x; base < N4; base += C::THREADS * UNROLL) {
    float4 g[UNROLL], u[UNROLL];
#pragma unroll
    for (int q = 0; q < UNROLL; ++q) {
      const int e = base + q * C::THREADS;
      g[q] = u[q] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (e < N4) {
        const int b = e / (KC / 4), k = k0 + (e % (KC / 4)) * 4;
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float4 gs = thread::ld_cg(reinterpret_cast<const float4*>(part + (s * B + b) * 2 * I + k));
          const float4 us = thread::ld_cg(reinterpret_cast<const float4*>(part + (s * B + b) * 2 * I + I + k));
          g[q].x += gs.x; g[q].y += gs.y; g[q].z += gs.z; g[q].w += gs.w;
          u[q].x += us.x; u[q].y += us.y; u[q].z += us.z; u[q].w += us.w;
        }
      }
    }
#pragma unroll
    for (int q = 0; q < UNROLL; ++q) {
      const int e = base + q * C::THREADS;
      if (e >= N4) continue;
      const float gv[4] = {g[q].x, g[q].y, g[q].z, g[q].w}, uv[4] = {u[q].x, u[q].y, u[q].z, u[q].w};
      float out[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        // Unsplit, the gate/up task stored bf16(silu(gate)) and bf16(up) already.
        const float silu = S == 1 ? gv[t] : thread::silu_bf16(thread::bf16_round(gv[t]));
        out[t] = silu * (S == 1 ? uv[t] : thread::bf16_round(uv[t]));
      }
      const int b = e / (KC / 4), k = (e % (KC / 4)) * 4;
      *reinterpret_cast<uint2*>(c.x + b * KC + k) = thread::pack4(out);
    }
  }
}

}  // namespace block
}  // namespace adamk
