// adamk/sync.cuh: dependencies between SMs through counters in global memory.
//
// A producer block bumps its counter once its output is written (release); a consumer block
// waits until every counter it needs has reached per_step * epoch (acquire). The epoch is the
// decode step's number, so counters are never reset. Comparisons are wrap-safe.
//
// Every wait is bounded in time: a step whose producer never comes (a scheduling bug, a fault)
// gives up after the session's limit and reports where, instead of hanging the GPU.
#pragma once
#include <cstdint>

namespace adamk {

// The wait limit the host sets, and what a wait that runs out of time records.
struct WaitTimeout {
  unsigned flag;     // 0 until the first timeout of the step
  int sm, kind, layer, task;
  int counter;       // index into the counter buffer; -1 polled q/k/v words, -2 attention partials
  unsigned value, target;
  unsigned long long limit_ns;  // set by the host (adamk_create, adamk_set_wait_limit)
};

// Where a task waits, for the report.
struct WaitSite {
  WaitTimeout* timeout;
  int kind, layer, task;
};

// %globaltimer: nanoseconds, the same clock on every SM.
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t) : : "memory");  // not hoisted above a wait
  return t;
}

namespace thread {

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void add_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// A release fence and the adds it orders: the fence waits once for the writes before it, the
// adds after it are plain.
__device__ __forceinline__ void fence_release() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

__device__ __forceinline__ void add_relaxed(unsigned* p, unsigned v) {
  asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Add v and return the value before: release for this thread's (and, after a barrier, the
// block's) writes, acquire for those of every earlier adder.
__device__ __forceinline__ unsigned add_acq_rel(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// A float published with its step: value and epoch in one 8-byte word, stored and loaded whole
// (single-copy atomic), so a reader that sees the epoch sees the value, without a fence on either
// side.
__device__ __forceinline__ void st_flagged(unsigned long long* p, float v, unsigned epoch) {
  const unsigned long long w = static_cast<unsigned long long>(epoch) << 32 | __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}
__device__ __forceinline__ unsigned long long ld_flagged(const unsigned long long* p) {
  unsigned long long w;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
  return w;
}
__device__ __forceinline__ bool flagged(unsigned long long w, unsigned epoch) { return static_cast<unsigned>(w >> 32) == epoch; }

__device__ __forceinline__ bool reached(unsigned value, unsigned target) {
  return static_cast<int>(value - target) >= 0;
}

// One more round of a wait that found its value not yet there. A round is a loaded L2 round trip,
// so the bookkeeping is free: every 256 rounds the thread reads the clock (the first reading
// starts it) and whether another block gave up. False once the wait has lasted the session's
// limit, recording where if it is the step's first, or once another block gave up.
struct Spin {
  unsigned rounds = 0;
  unsigned long long since = 0;
};

__device__ __forceinline__ bool spin_on(Spin& s, const WaitSite& w, int counter, unsigned value, unsigned target) {
#ifdef ADAMK_UNBOUNDED_WAITS  // what the bound costs (benchmarks/ablation.py): wait forever
  return true;
#endif
  if (++s.rounds & 255u) return true;
  if (*reinterpret_cast<volatile unsigned*>(&w.timeout->flag)) return false;  // another block gave up
  const unsigned long long now = global_ns();
  if (s.since == 0) s.since = now;
  if (now - s.since < w.timeout->limit_ns) return true;
  if (atomicCAS(&w.timeout->flag, 0u, 1u) == 0u) {
    w.timeout->sm = blockIdx.x; w.timeout->kind = w.kind; w.timeout->layer = w.layer; w.timeout->task = w.task;
    w.timeout->counter = counter; w.timeout->value = value; w.timeout->target = target;
    __threadfence();
  }
  return false;
}

// Wait until the words at(i) (where live[i], i < N) carry `epoch`, and return their values (0
// where not live). Every load goes out before any is checked, then each word not yet of this step
// is loaded again until it is: the data is its own dependency (no counter, no release fence at
// the producer) and a ready set costs one L2 round trip. A wait that runs out of time gives up as a
// counter wait does (spin_on; `what` stands for the counter: -1 q/k/v words, -2 attention
// partials), with the values as they are.
template <int N, class At>
__device__ __forceinline__ void poll_flagged(At at, const bool (&live)[N], unsigned epoch, float (&out)[N],
                                             const WaitSite& site, int what) {
  unsigned long long w[N];
#pragma unroll
  for (int i = 0; i < N; ++i) w[i] = live[i] ? ld_flagged(at(i)) : 0ull;
#ifndef ADAMK_ABLATE_WAITS
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (!live[i]) continue;
    Spin spin;
    while (!flagged(w[i], epoch)) {  // not yet of this step: load it again
      if (!spin_on(spin, site, what, 0, epoch)) break;
      w[i] = ld_flagged(at(i));
    }
  }
#endif
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = __uint_as_float(static_cast<unsigned>(w[i]));
}

}  // namespace thread

namespace block {

// Wait until counters[first .. first+count) each reach target. The block's threads share the
// range; the caller ends the wait with a barrier. False when a wait ran out of time.
__device__ __forceinline__ bool wait_counters(const unsigned* counters, int first, int count,
                                              unsigned target, const WaitSite& site) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const unsigned* c = counters + first + i;
    thread::Spin spin;
    unsigned v;
    while (!thread::reached(v = thread::ld_acquire(c), target))
      if (!thread::spin_on(spin, site, first + i, v, target)) return false;
  }
  return true;
}

// After a barrier that follows the block's last write of the task: publish it (count bumps at
// once). The release add is cumulative: the barrier made every thread's writes visible to
// thread 0, and the release orders them before the add at GPU scope (no separate fence needed).
// Thread 0's warp issues no ring copies, so the release does not wait for them. It still waits for
// the block's own stores, and the block for thread 0 at its next barrier (see
// docs/experiments.md, "The cost of a release per task"). Runs of tasks that need no per-task
// publication publish a group of tiles behind one fence instead (adamk/linear.cuh, publish_group).
__device__ __forceinline__ void signal(unsigned* counter, unsigned count = 1u) {
#ifdef ADAMK_ABLATE_RELEASE  // the add without its release: what waiting for the writes costs
  if (threadIdx.x == 0) thread::add_relaxed(counter, count);
#else
  if (threadIdx.x == 0) thread::add_release(counter, count);
#endif
}

// After a barrier that follows the block's last write of its share: count it in `arrivals`, and
// whether it was the last of the `per_step` shares of this step (true on every thread). The
// last one sees every other share's writes (acquire, then the barrier).
__device__ __forceinline__ bool arrive_last(unsigned* arrivals, unsigned per_step, unsigned epoch) {
  const bool last = threadIdx.x == 0 && thread::add_acq_rel(arrivals, 1u) == per_step * epoch - 1u;
  return __syncthreads_or(last);
}

}  // namespace block
}  // namespace adamk
