// adamk/tasks.cuh: what every generated kernel shares: task kinds, the tiling of a linear
// stage, and the kernel's arguments.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>
#include "adamk/sync.cuh"

namespace adamk {

// Task kinds, as numbered in the compiled schedule (ada_mk.search.plan.KIND_IDS).
enum Kind : int { QKV = 0, ATTN = 1, O = 2, GATE_UP = 3, DOWN = 4, LM_HEAD = 5, ARGMAX = 6 };

constexpr int THREADS = 256;

// Diagnostic builds (benchmarks/ablation.py) remove one part of the step to time what is left:
// ADAMK_ABLATE_WAITS (no counter waits), ADAMK_ABLATE_STAGING (no input staging), ADAMK_ABLATE_MATH
// (weights stream through the ring, no multiply), ADAMK_ABLATE_ATTENTION (no attention tasks; with
// ADAMK_ABLATE_WAITS only, or the O projection waits forever), ADAMK_ABLATE_RELEASE (counters
// bumped without release semantics: a consumer may read stale data), ADAMK_ABLATE_DECODE (quantized
// codes multiplied as if they were bf16, unconverted), ADAMK_ABLATE_SCALES (no scale per group: the
// multiply's products are summed unscaled). Their outputs are wrong by design.
#if defined(ADAMK_ABLATE_WAITS) || defined(ADAMK_ABLATE_STAGING) || defined(ADAMK_ABLATE_MATH) || \
    defined(ADAMK_ABLATE_ATTENTION) || defined(ADAMK_ABLATE_RELEASE) || defined(ADAMK_ABLATE_DECODE) || \
    defined(ADAMK_ABLATE_SCALES)
#define ADAMK_ABLATED 1
#endif
constexpr int WARPS = THREADS / 32;

// How a stage's weights stream (ada_mk.search.plan.LinearTiling.weights): bf16, 8-bit codes with
// float32 scales, or 4-bit codes with a bf16 (scale, offset) pair per group (docs/quantized-weights.md).
enum WeightFormat : int { BF16 = 0, FP8 = 1, INT8 = 2, INT4 = 3 };

// One fused linear stage: N output rows, reduction length K, tasks of ROWS rows x K/KSPLIT
// columns. A task's weight tile streams through the ring in chunks of CHUNK_ROWS rows x
// CHUNK_COLS columns, row group by row group, each group's column blocks in order. With one
// sequence a chunk is WARPS / WPR whole rows, each reduced by WPR warps; the batched multiply
// (Cfg::BATCHED) takes 16 rows a chunk (the MMA's M), over KC / CHUNK_COLS column blocks.
// TILED: the packed weights hold each task's chunks back to back, each as its ring slot holds it
// (LinearTiling.tiled). FORMAT and GROUP: the weights' format and, for quantized codes, the input
// columns per scale (0: one scale per row); a quantized chunk is its codes, then its scales
// [CHUNK_ROWS][SCALES] (float32; int4: bf16 scale and offset pairs) (docs/quantized-weights.md,
// "The packed chunk").
template <int N_, int K_, int ROWS_, int KSPLIT_, int WPR_, int CHUNK_ROWS_ = WARPS / WPR_,
          int CHUNK_COLS_ = K_ / KSPLIT_, bool TILED_ = false, int FORMAT_ = BF16, int GROUP_ = 0>
struct Tiling {
  static constexpr int N = N_, K = K_, ROWS = ROWS_, KSPLIT = KSPLIT_, WPR = WPR_;
  static constexpr int KC = K / KSPLIT;             // columns of one task
  static constexpr int VEC = KC / 8;                // 16-byte vectors in a row of a task (bf16)
  static constexpr int CHUNK_ROWS = CHUNK_ROWS_;    // rows of one weight chunk (one ring slot)
  static constexpr int CHUNK_COLS = CHUNK_COLS_;    // its columns
  static constexpr int CHUNK_VEC = CHUNK_COLS / 8;  // 16-byte vectors in a row of a chunk (bf16)
  static constexpr int KPARTS = KC / CHUNK_COLS;    // column blocks of a row group
  static constexpr int CHUNKS = ROWS / CHUNK_ROWS * KPARTS;  // chunks of one task
  static constexpr int TILES = (N + ROWS - 1) / ROWS;
  static constexpr bool TILED = TILED_;
  static constexpr int FORMAT = FORMAT_, GROUP = GROUP_;
  static constexpr bool Q8 = FORMAT == FP8 || FORMAT == INT8;  // 8-bit codes
  static constexpr bool Q4 = FORMAT == INT4;                     // 4-bit codes
  static constexpr int SCALES = FORMAT == BF16 ? 0 : GROUP ? CHUNK_COLS / GROUP : 1;  // scales per row of a chunk
  static constexpr int CODE_BYTES = CHUNK_ROWS * CHUNK_COLS * (Q4 ? 1 : Q8 ? 2 : 4) / 2;  // a chunk's weights
  static constexpr int CHUNK_BYTES = (CODE_BYTES + 4 * CHUNK_ROWS * SCALES + 15) / 16 * 16;  // and its scales
  static_assert(K % KSPLIT == 0 && KC % 8 == 0, "K-chunks are whole 16-byte vectors");
  static_assert(ROWS % CHUNK_ROWS == 0, "a task is whole row groups");
  static_assert(KC % CHUNK_COLS == 0 && CHUNK_COLS % 8 == 0, "a row group is whole column blocks of 16-byte vectors");
  static_assert(!Q8 || (TILED && CHUNK_COLS % 64 == 0 && GROUP % 32 == 0 && (GROUP == 0 || CHUNK_COLS % GROUP == 0)),
                "8-bit chunks are tiled, whole 64-column blocks and whole scale groups of 32-column halves");
  static_assert(!Q4 || (TILED && CHUNK_COLS % 64 == 0 && GROUP > 0 && GROUP % 32 == 0 && CHUNK_COLS % GROUP == 0),
                "4-bit chunks are tiled, whole 64-column blocks and whole groups of 32-column halves");
};

// The batched multiply (adamk/mma.cuh, TileDot) loads 64 bytes at the same column from each of 8
// rows of a weight chunk at once; with rows a multiple of 128 bytes apart rows 2i and 2i + 1 would
// hit the same banks, so odd rows keep the two 64-byte halves of each 128-byte line swapped
// (16-byte vectors XOR 4; rows of an odd number of 64-byte halves alternate by themselves). A
// cp.async ring puts them there; tiled weights are stored that way (Tiling::TILED;
// ada_mk.runtime.weights.tile_matrix). bf16 and 8-bit chunks; 4-bit chunks: nibble_offset.
template <class C, class T>
constexpr bool SWIZZLED = C::BATCHED && T::CHUNK_COLS * (T::Q8 ? 1 : 2) % 128 == 0;

// The ring's view of an attention task where its K/V rows come through the ring (Cfg::KV_RING):
// KV_SLOTS chunks of KV_PIECE positions, the K rows, then the V rows.
template <class C>
struct KvSlots {
  static constexpr int CHUNKS = C::KV_SLOTS;
  static_assert(!C::KV_RING || (4 * C::KV_PIECE * C::HD <= C::STAGE_BYTES && C::KV_PIECE % 16 == 0 &&
                                C::KV_PIECE <= 16 * WARPS), "whole blocks of 16 positions, a warp each, in a slot");
};

// Where element k of row `row` sits in a bf16 weight chunk in the ring ([CHUNK_ROWS][CHUNK_COLS]).
template <class C, class T>
__device__ __forceinline__ int tile_offset(int row, int k) {
  return row * T::CHUNK_COLS + (SWIZZLED<C, T> ? k ^ ((row & 1) << 5) : k);
}

// Where byte `byte` of row `row` sits among an 8-bit chunk's codes ([CHUNK_ROWS][CHUNK_COLS]).
template <class C, class T>
__device__ __forceinline__ int code_offset(int row, int byte) {
  return row * T::CHUNK_COLS + (SWIZZLED<C, T> ? byte ^ ((row & 1) << 6) : byte);
}

// Where byte `byte` of row `row` sits among a 4-bit chunk's codes ([CHUNK_ROWS][CHUNK_COLS / 2]).
// The batched multiply loads 32 bytes (a 64-column block) at the same column from each of 8 rows,
// 4 rows per 16-lane phase of an 8-byte load: the row's 64-column blocks are XORed so that rows
// 4m .. 4m + 3 fall in the four 32-byte quarters of the banks (rows of whole 128-byte lines: by
// row % 4; rows of an odd number of 64-byte halves: by (row / 2) % 2; others spread by themselves;
// ada_mk.runtime.weights_int4.block_swizzle).
template <class C, class T>
__device__ __forceinline__ int nibble_offset(int row, int byte) {
  constexpr int ROW_BYTES = T::CHUNK_COLS / 2, LINE = ROW_BYTES % 128;
  const int swz = !C::BATCHED ? 0 : LINE == 0 ? (row & 3) : LINE == 64 ? (row >> 1) & 1 : 0;
  return row * ROW_BYTES + (byte ^ (swz << 5));
}

// Elements between consecutive sequences of the staged activations. The batched multiply reads
// them as it reads a weight chunk; here each sequence's row stays contiguous (one bulk copy per
// row, adamk/copy.cuh), and 64 bytes of padding put odd rows in the other half of each 128-byte
// line instead of the swizzle (ada_mk.search.plan.LinearTiling.x_row).
template <class C, class T>
constexpr int X_ROW = T::KC + (C::BATCHED ? 32 : 0);

// Where element k of sequence b sits in the staged activations.
template <class C, class T>
__device__ __forceinline__ int x_offset(int b, int k) { return b * X_ROW<C, T> + k; }

// What a step that refused its inputs records (adamk/megakernel.cuh, inputs_in_range).
struct BadInput {
  int flag;  // 0 until a step finds a token or position out of range
  int sequence, token, position;
};

// Kernel arguments: device buffers laid out by the plan, the step's inputs and outputs.
struct Args {
  const __nv_bfloat16* weights;
  float* scratch;
  unsigned* counters;
  __nv_bfloat16* k_cache;
  __nv_bfloat16* v_cache;
  const int* tokens;     // [B] this step's token per sequence
  const int* positions;  // [B] its position (= tokens already in the cache)
  int* next_tokens;      // [B] greedy choice
  int* next_positions;   // [B] positions + 1, so steps can chain on the device
  unsigned* steps;       // [blocks] steps each block has run since the last reset (adamk/megakernel.cuh)
  WaitTimeout* timeout;  // the wait limit, and where a wait that runs out of time reports
  BadInput* bad_input;   // where a step whose tokens or positions are out of range reports
  unsigned long long* profile;  // profile builds: [SM][task][wait start, inputs ready, input staged, end] ns
};

// Attention task idx of `layer`: sequence b, K/V head g, split j of the positions 0..pos, which are
// [p0, p1) of the head's cache rows kc and vc (the attention task, and the ring that fetches the
// rows where Cfg::KV_RING).
template <class C>
struct AttnSplit {
  int b, g, j, pos, p0, p1;
  __nv_bfloat16* kc;
  __nv_bfloat16* vc;

  __device__ AttnSplit(const int* positions, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, int layer, int idx) {
    constexpr int NS = C::ATTN_SPLITS;
    j = idx % NS;
    g = (idx / NS) % C::NKV;
    b = idx / (NS * C::NKV);
    pos = positions[b];
    const int n = pos + 1, per = (n + NS - 1) / NS;
    p0 = j * per;
    p1 = min(n, p0 + per);
    const size_t head = (static_cast<size_t>(layer) * C::B * C::NKV + b * C::NKV + g) * C::MAXCTX * C::HD;
    kc = k_cache + head;
    vc = v_cache + head;
  }
  __device__ AttnSplit(const Args& a, int layer, int idx) : AttnSplit(a.positions, a.k_cache, a.v_cache, layer, idx) {}
};

}  // namespace adamk
