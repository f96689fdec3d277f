// adamk/activations.cuh: reading the residual stream and staging the activation chunk that a
// linear task multiplies into shared memory, as bf16 [B][kc] (block scope).
//
// Each stage's input is rebuilt by its consumer from the producers' partial sums: RMSNorm of the
// residual stream (QKV, gate/up, LM head), the combination of attention's sequence splits
// (O projection), SiLU(gate) * up (down projection). Values are rounded to bf16 wherever the
// bf16 reference model rounds them, so both compute the same function.
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

  __device__ void load4(int b, int i, float (&v)[4]) const {
    if (part == nullptr) {
      const uint2 raw = *reinterpret_cast<const uint2*>(embed + static_cast<size_t>(tokens[b]) * C::H + i);
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
template <class C>
__device__ void stage_rmsnorm(Ctx<C>& c, const Stream<C>& s, const __nv_bfloat16* gamma, int k0, int kc) {
  constexpr int B = C::B;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float ss[B] = {};
  for (int i = threadIdx.x * 4; i < C::H; i += C::THREADS * 4) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float v[4];
      s.load4(b, i, v);
      ss[b] += v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3];
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
  const int q = kc / 4;
  for (int e = threadIdx.x; e < B * q; e += C::THREADS) {
    const int b = e / q, k = (e % q) * 4;
    const float rstd = c.misc[(C::THREADS / 32) * B + b];
    float v[4];
    s.load4(b, k0 + k, v);
    __nv_bfloat16 out[4];
#pragma unroll
    for (int t = 0; t < 4; ++t)
      out[t] = __float2bfloat16_rn(__bfloat162float(gamma[k0 + k + t]) * thread::bf16_round(v[t] * rstd));
    *reinterpret_cast<uint2*>(c.x + b * kc + k) = *reinterpret_cast<const uint2*>(out);
  }
}

// x[b][k] = attention output of column k0 + k: the sequence splits' partial results combined
// (flash-decoding's reduction), for the heads this K-chunk covers.
template <class C>
__device__ void stage_attention(Ctx<C>& c, int layer, int k0, int kc) {
  constexpr int B = C::B, NS = C::ATTN_SPLITS, HD = C::HD, NH = C::NH;
  const float* o = c.scratch(C::S::ATTN_O, layer);
  const float* ml = c.scratch(C::S::ATTN_ML, layer);
  const int h0 = k0 / HD, nh = (k0 + kc - 1) / HD - h0 + 1;
  float* wts = c.attn;  // [B][nh][NS]: each split's weight in the combined softmax
  for (int e = threadIdx.x; e < B * nh; e += C::THREADS) {
    const int b = e / nh, h = h0 + e % nh;
    const float* p = ml + (b * NH + h) * NS * 2;
    float m = -INFINITY;
    for (int j = 0; j < NS; ++j) m = fmaxf(m, thread::ld_cg(p + 2 * j));
    float den = 0.f;
    for (int j = 0; j < NS; ++j) den += thread::ld_cg(p + 2 * j + 1) * __expf(thread::ld_cg(p + 2 * j) - m);
    for (int j = 0; j < NS; ++j) wts[e * NS + j] = __expf(thread::ld_cg(p + 2 * j) - m) / den;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < B * kc; e += C::THREADS) {
    const int b = e / kc, k = e % kc, h = (k0 + k) / HD, d = (k0 + k) % HD;
    const float* w = wts + (b * nh + h - h0) * NS;
    const float* src = o + ((b * NH + h) * NS) * HD + d;
    float acc = 0.f;
    for (int j = 0; j < NS; ++j) acc += w[j] * thread::ld_cg(src + j * HD);
    c.x[b * kc + k] = __float2bfloat16_rn(acc);
  }
}

// x[b][k] = bf16(bf16(silu(gate)) * up) for intermediate column k0 + k, as HF's MLP.
template <class C>
__device__ void stage_silu_mul(Ctx<C>& c, int layer, int k0, int kc) {
  constexpr int B = C::B, I = C::I, S = C::GateUp::KSPLIT;
  const float* part = c.scratch(C::S::GATE_UP_PART, layer);
  for (int e = threadIdx.x; e < B * kc; e += C::THREADS) {
    const int b = e / kc, k = k0 + e % kc;
    float g = 0.f, u = 0.f;
    for (int s = 0; s < S; ++s) {
      g += thread::ld_cg(part + (s * B + b) * 2 * I + k);
      u += thread::ld_cg(part + (s * B + b) * 2 * I + I + k);
    }
    g = thread::bf16_round(g);
    u = thread::bf16_round(u);
    const float silu = thread::bf16_round(g / (1.f + expf(-g)));
    c.x[b * kc + (e % kc)] = __float2bfloat16_rn(silu * u);
  }
}

}  // namespace block
}  // namespace adamk
