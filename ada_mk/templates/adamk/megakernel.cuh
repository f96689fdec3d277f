// adamk/megakernel.cuh: the persistent decode step. Each block walks its SM's compiled task list;
// before a task it waits for exactly the counters the task reads (the rule of
// ada_mk/search/deps.py), after it, it bumps the one counter its output fills (gate/up, LM head
// and unsplit O / down tasks: a group of a run at once, block::publish_group). QKV tasks have no
// counter: each q/k/v word carries the step's epoch, and attention polls the words themselves.
#pragma once
#include "adamk/attention.cuh"
#include "adamk/linear.cuh"

namespace adamk {

namespace block {

template <class C>
struct Waiter {
  const Ctx<C>& c;
  int kind, layer, idx;
  bool ok = true;

  // Counters [first, first + count) from `base` each reach per_step * epoch.
  __device__ void on(unsigned* base, int first, int count, int per_step) {
    unsigned target = per_step * c.epoch;
#ifdef ADAMK_TEST_OFF_BY_ONE  // tests/gpu: a target one past what the producers give never comes
    if (kind == DOWN && layer == 0) target += 1u;
#endif
    if (ok) ok = wait_counters(base, first, count, target, {c.a.timeout, kind, layer, idx});
  }
  // The tiles of stage T (counters at `base`) that cover output rows [lo, hi).
  template <class T>
  __device__ void rows(unsigned* base, int lo, int hi) {
    on(base, lo / T::ROWS, (hi - 1) / T::ROWS - lo / T::ROWS + 1, T::KSPLIT);
  }
  template <class T>
  __device__ void all(unsigned* base) { on(base, 0, T::TILES, T::KSPLIT); }
};

// Which inputs a task reads: tasks of a stage with the same key wait for the same counters.
// RMSNorm consumers read the whole stream; attention one K/V group; the O and down projections
// one K-chunk.
template <class C>
__device__ int inputs_key(int kind, int layer, int idx) {
  int part = 0;
  if (kind == ATTN) part = 1 + (idx / C::ATTN_SPLITS) % C::NKV;
  if (kind == O) part = 1 + idx % C::O::KSPLIT;
  if (kind == DOWN) part = 1 + idx % C::Down::KSPLIT;
  return kind | layer << 8 | part << 16;
}

// Wait for every input of task (kind, layer, idx). A task whose inputs the block waited for
// already (the previous task of the same stage and part) skips the wait: the schedule is fixed,
// so this only removes counter reads that cannot fail. False when a wait ran out of time.
template <class C>
__device__ bool wait_inputs(Ctx<C>& c, int kind, int layer, int idx) {
  using Counters = typename C::Counters;
  const int key = inputs_key<C>(kind, layer, idx);
#ifdef ADAMK_ABLATE_WAITS
  __syncthreads();
  return true;
#endif
  if (c.waited == key) return true;
  c.waited = key;
  Waiter<C> w{c, kind, layer, idx};
  switch (kind) {
    case QKV:  // the whole residual stream: RMSNorm needs every element
      if (layer > 0) w.template all<typename C::Down>(c.counter(Counters::DOWN, layer - 1));
      break;
    case ATTN:  // q, k and v come with their epoch: the task polls them (attention_task)
      break;
    case O: {  // the attention heads this K-chunk covers, for every sequence
      using T = typename C::O;
      const int lo = (idx % T::KSPLIT) * T::KC, hi = lo + T::KC;
      const int g0 = lo / (C::HD * C::G), g1 = (hi - 1) / (C::HD * C::G);
      // Every group of every sequence (an unsplit O): the counters lie back to back, so one round
      // of polls, not a loaded L2 round trip per sequence one after another (see
      // docs/experiments.md, "One round of polls for an unsplit O").
      if (g1 - g0 + 1 == C::NKV) w.on(c.counter(Counters::ATTN, layer), 0, C::B * C::NKV, C::ATTN_SPLITS);
      else
        for (int b = 0; b < C::B; ++b) w.on(c.counter(Counters::ATTN, layer), b * C::NKV + g0, g1 - g0 + 1, C::ATTN_SPLITS);
      break;
    }
    case GATE_UP:
      w.template all<typename C::O>(c.counter(Counters::O, layer));
      break;
    case DOWN: {  // the gate and up rows of this K-chunk's columns (interleaved: 2k, 2k + 1)
      using T = typename C::Down;
      const int lo = (idx % T::KSPLIT) * T::KC, hi = lo + T::KC;
      w.template rows<typename C::GateUp>(c.counter(Counters::GATE_UP, layer), 2 * lo, 2 * hi);
      break;
    }
    case LM_HEAD:
      w.template all<typename C::Down>(c.counter(Counters::DOWN, C::L - 1));
      break;
    case ARGMAX:
      w.on(c.a.counters + Counters::LM_HEAD, 0, C::LmHead::TILES, 1);
      break;
  }
  return !__syncthreads_or(!w.ok);
}

// The greedy choice: the best of the LM head tiles' best rows, the first index on ties. The
// whole block reads the tiles' results, all loads first, then reduces.
template <class C>
__device__ void argmax_task(Ctx<C>& c) {
  constexpr int TILES = C::LmHead::TILES, PER = (TILES + C::THREADS - 1) / C::THREADS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int b = 0; b < C::B; ++b) {
    const float* val = c.a.scratch + C::Scratch::ARG_VAL + b * TILES;
    const int* arg = reinterpret_cast<const int*>(c.a.scratch) + C::Scratch::ARG_IDX + b * TILES;
    float v[PER];
    int i[PER];
#pragma unroll
    for (int q = 0; q < PER; ++q) {
      const int t = threadIdx.x + q * C::THREADS;
      v[q] = t < TILES ? thread::ld_cg(val + t) : -INFINITY;
      i[q] = t < TILES ? __ldcg(arg + t) : 0x7fffffff;
    }
    float best = v[0];
    int idx = i[0];
#pragma unroll
    for (int q = 1; q < PER; ++q)
      if (v[q] > best || (v[q] == best && i[q] < idx)) { best = v[q]; idx = i[q]; }
    warp::argmax(best, idx);
    if (lane == 0) {
      c.misc[warp] = best;
      reinterpret_cast<int*>(c.misc)[WARPS + warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < WARPS ? c.misc[lane] : -INFINITY;
      idx = lane < WARPS ? reinterpret_cast<int*>(c.misc)[WARPS + lane] : 0x7fffffff;
      warp::argmax(best, idx);
      if (lane == 0) {
#ifdef ADAMK_ABLATED
        idx = idx >= 0 && idx < C::V ? idx : 0;  // garbage logits must not index past the embedding
#endif
        c.a.next_tokens[b] = idx;
        c.a.next_positions[b] = c.a.positions[b] + 1;
      }
    }
    __syncthreads();
  }
}

#ifdef ADAMK_PROFILE
// The latest of the block's stamps `t`. A stamp taken after wait_inputs is read, as ptxas
// schedules it, when the thread's own share of the wait ended, not after the barrier that ends
// the block's wait, so one thread's stamp can be early: the latest of them is when the task's
// inputs were all ready.
template <class C>
__device__ unsigned long long latest_ns(Ctx<C>& c, unsigned long long t) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  unsigned long long* slot = reinterpret_cast<unsigned long long*>(c.misc);
  for (int x = 16; x > 0; x >>= 1) t = max(t, __shfl_xor_sync(0xffffffffu, t, x));
  if (lane == 0) slot[warp] = t;
  __syncthreads();
  for (int w = 0; w < WARPS; ++w) t = max(t, slot[w]);
  __syncthreads();
  return t;
}
#endif

// Are this step's tokens and positions in range? They come from device memory (the caller's, or
// the previous step's outputs), which the host cannot check without waiting. Every block reads
// the same values, so every block refuses the same step, and the step runs nothing: no task, no
// counter, no step count. Block 0 reports the first bad sequence.
template <class C>
__device__ bool inputs_in_range(const Args& a) {
  int bad = -1, token = 0, position = 0;
  for (int b = C::B - 1; b >= 0; --b) {
    const int t = a.tokens[b], p = a.positions[b];
    if (t < 0 || t >= C::V || p < 0 || p >= C::MAXCTX) bad = b, token = t, position = p;
  }
  if (bad >= 0 && blockIdx.x == 0 && threadIdx.x == 0 && atomicCAS(&a.bad_input->flag, 0, 1) == 0) {
    a.bad_input->sequence = bad;
    a.bad_input->token = token;
    a.bad_input->position = position;
  }
  return bad < 0;
}

}  // namespace block

// The kernel body: runs[sm_runs[sm] .. sm_runs[sm + 1]) is this SM's part of the plan, each run
// {kind | layer << 8, first index, stride, count}.
//
// The step's number (epoch) is one more than the steps this block has run (a.steps), the same on
// every block, and the block counts its step when it leaves: the kernel needs nothing from the host
// per step, so steps chain on the device and a captured CUDA graph replays them.
template <class C>
__device__ void megakernel(const Args& a, const int4* runs, const int* sm_runs) {
  if (!block::inputs_in_range<C>(a)) return;
  extern __shared__ __align__(128) unsigned char smem[];
  const int4* first = runs + sm_runs[blockIdx.x];
  const int4* last = runs + sm_runs[blockIdx.x + 1];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::SMEM_BARRIER);  // staging's, then the ring slots'
  Ctx<C> c{a,
           block::StreamRing<C>(smem + C::SMEM_RING, a.weights, first, last, bars + 1, a.positions, a.k_cache,
                                a.v_cache),
           reinterpret_cast<__nv_bfloat16*>(smem + C::SMEM_X), reinterpret_cast<float*>(smem + C::SMEM_RED),
           reinterpret_cast<float*>(smem + C::SMEM_ATTN), reinterpret_cast<float*>(smem + C::SMEM_MISC),
           {bars}};
  c.epoch = a.steps[blockIdx.x] + 1u;
#ifdef ADAMK_BULK_COPY
  c.bulk.init();
  c.kv_bars = bars + 1 + (C::BULK_RING ? C::STAGES : 0);
  if (threadIdx.x == 0)
    for (int i = 0; i < C::ATTN_BUFS; ++i) thread::mbar_init(c.kv_bars + i, 1);
  __syncthreads();
#endif
#ifdef ADAMK_PROFILE
  unsigned long long* prof = a.profile + static_cast<size_t>(blockIdx.x) * C::MAX_TASKS * 4;
#endif
  for (const int4* r = first; r != last; ++r) {
    const int4 run = *r;
    const int kind = run.x & 0xff, layer = run.x >> 8;
    for (int i = 0; i < run.w; ++i) {
      const int idx = run.y + i * run.z;
#ifdef ADAMK_ABLATE_ATTENTION
      if (kind == ATTN) {
        if constexpr (C::KV_RING)  // its K/V slots still pass through the ring
          for (int k = 0; k < C::KV_SLOTS; ++k) c.ring.next();
        continue;
      }
#endif
#ifdef ADAMK_PROFILE
      const unsigned long long t_wait = global_ns();
#endif
      // The cached K/V rows an attention task reads were written by earlier steps: their copies
      // go out before the wait for this step's q, k and v.
      // So are the RMSNorm weights of a task that will normalise its input.
      const int prefetched = kind == ATTN ? block::prefetch_kv<C>(c, layer, idx) : 0;
      const bool gamma = block::prefetch_norm_weights(c, kind, layer, idx);
      if (!block::wait_inputs(c, kind, layer, idx)) {
        block::drain_kv(c, prefetched);
        block::drain_norm_weights(c, gamma);
        c.ring.drain();
        if (threadIdx.x == 0) a.steps[blockIdx.x] = c.epoch;
        return;
      }
#ifdef ADAMK_PROFILE
      const unsigned long long t_ready = block::latest_ns(c, global_ns());
      c.t_staged = t_ready;
#endif
      switch (kind) {
        case QKV: block::linear_task<C, QKV>(c, layer, idx); break;
        case ATTN: block::attention_task<C>(c, layer, idx); break;
        case O: block::linear_task<C, O>(c, layer, idx); break;
        case GATE_UP: block::linear_task<C, GATE_UP>(c, layer, idx); break;
        case DOWN: block::linear_task<C, DOWN>(c, layer, idx); break;
        case LM_HEAD: block::linear_task<C, LM_HEAD>(c, layer, idx); break;
        case ARGMAX: block::argmax_task<C>(c); break;
      }
      block::publish_group(c, kind, layer, run, i);
#ifdef ADAMK_PROFILE
      if (threadIdx.x == 0) {
        prof[0] = t_wait;
        prof[1] = t_ready;
        prof[2] = c.t_staged;
        prof[3] = global_ns();
      }
      prof += 4;
#endif
    }
  }
  c.ring.drain();
  if (threadIdx.x == 0) a.steps[blockIdx.x] = c.epoch;
}

}  // namespace adamk
