/* Decode with a generated MegaKernel from C: load packed weights, feed a prompt, print the
 * greedy continuation as token ids. Every step runs on our own CUDA stream through
 * adamk_decode_async, each one reading the tokens and positions the step before it wrote, and the
 * host waits once, at the end (adamk_synchronize).
 *
 *   make KERNEL_DIR=~/.cache/ada_mk/build/adamk_smollm2_135m_h100_bs1-<key>
 *   ./decode weights.bin 16 504 3575 282 4649 314      # "The capital of France is" (SmolLM2)
 *
 * weights.bin is the packed buffer for this kernel's layout, written by
 *   adamk-pack --weights SmolLM2.gguf --library <KERNEL_DIR>/lib<kernel>.so -o weights.bin
 * The kernel's header (<kernel>.h, next to the library) is force-included by the Makefile
 * (-include), so this file works for any kernel: it only uses the ADAMK_* names the header defines.
 * Every sequence of the batch gets the same prompt.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef ADAMK_BATCH
#error "compile with -include <kernel>.h (see the Makefile)"
#endif

#define B ADAMK_BATCH

/* One step's inputs on the device; step t reads io[t % 2] and writes io[(t + 1) % 2]. */
typedef struct {
  int32_t tokens[B], positions[B];
} step_io;

static void* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
  long n = ftell(f);
  if (n < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NULL; }
  void* buf = malloc((size_t)n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

/* Queue the whole decode on `stream`: prompt [n_prompt][B] (device memory) goes in step by step,
 * copied over the token the step before chose; then each step feeds on the one before. Next token t
 * of sequence 0 lands in out[t]. Returns an adamk_status. */
static int decode(adamk_session* s, cudaStream_t stream, step_io* io, const int32_t* prompt, int n_prompt,
                  int32_t* out, int n_new) {
  if (cudaMemsetAsync(io, 0, 2 * sizeof *io, stream) != cudaSuccess) return ADAMK_ERR_CUDA; /* positions 0 */
  for (int t = 0; t < n_prompt + n_new - 1; ++t) {
    step_io* in = &io[t % 2];
    step_io* next = &io[(t + 1) % 2];
    if (t < n_prompt &&
        cudaMemcpyAsync(in->tokens, prompt + t * B, sizeof in->tokens, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
      return ADAMK_ERR_CUDA;
    int rc = adamk_decode_async(s, stream, in->tokens, in->positions, next->tokens, next->positions, NULL);
    if (rc != ADAMK_OK) return rc;
    if (t >= n_prompt - 1 &&
        cudaMemcpyAsync(&out[t - (n_prompt - 1)], &next->tokens[0], sizeof(int32_t), cudaMemcpyDeviceToHost,
                        stream) != cudaSuccess)
      return ADAMK_ERR_CUDA;
  }
  return adamk_synchronize(s, stream); /* the one wait; it reports what the steps found */
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s WEIGHTS.bin N TOKEN [TOKEN ...]\n  %s\n", argv[0], adamk_version());
    return 2;
  }
  int n_new = atoi(argv[2]);
  int n_prompt = argc - 3;
  if (n_new < 1 || n_prompt + n_new > ADAMK_MAX_CONTEXT) {
    fprintf(stderr, "need 1 <= N and prompt + N <= %d\n", ADAMK_MAX_CONTEXT);
    return 2;
  }
  int32_t* prompt = malloc(sizeof(int32_t) * B * (size_t)n_prompt); /* [n_prompt][B] */
  if (!prompt) return 1;
  for (int i = 0; i < n_prompt * B; ++i) prompt[i] = (int32_t)atoi(argv[3 + i / B]);
  size_t size = 0;
  void* weights = read_file(argv[1], &size);
  if (!weights) { perror(argv[1]); free(prompt); return 1; }
  if (size != ADAMK_WEIGHTS_BYTES) {
    fprintf(stderr, "%s: %zu bytes; this kernel (%s) needs %zu\n", argv[1], size, ADAMK_KERNEL_NAME,
            (size_t)ADAMK_WEIGHTS_BYTES);
    free(weights);
    free(prompt);
    return 1;
  }

  adamk_session* s = NULL;
  int rc = adamk_create(weights, size, /*device=*/0, /*weights_on_device=*/0, &s);
  free(weights); /* adamk_create copied it to the GPU */
  if (rc != ADAMK_OK) {
    fprintf(stderr, "adamk_create: %s\n", adamk_last_error());
    free(prompt);
    return 1;
  }

  cudaStream_t stream = NULL;
  step_io* io = NULL;         /* device memory */
  int32_t* prompt_d = NULL;   /* device memory */
  int32_t* out = NULL;        /* pinned host memory, so the copies into it stay asynchronous */
  const size_t prompt_bytes = sizeof(int32_t) * B * (size_t)n_prompt;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc((void**)&io, 2 * sizeof *io) != cudaSuccess ||
      cudaMalloc((void**)&prompt_d, prompt_bytes) != cudaSuccess ||
      cudaMemcpyAsync(prompt_d, prompt, prompt_bytes, cudaMemcpyHostToDevice, stream) != cudaSuccess ||
      cudaMallocHost((void**)&out, sizeof(int32_t) * (size_t)n_new) != cudaSuccess) {
    fprintf(stderr, "CUDA: %s\n", cudaGetErrorString(cudaGetLastError()));
    rc = ADAMK_ERR_CUDA;
  } else {
    rc = decode(s, stream, io, prompt_d, n_prompt, out, n_new);
    if (rc != ADAMK_OK) fprintf(stderr, "decode: %s\n", adamk_last_error());
  }
  for (int i = 0; rc == ADAMK_OK && i < n_new; ++i) printf("%d%c", out[i], i == n_new - 1 ? '\n' : ' ');

  cudaFreeHost(out);
  cudaFree(prompt_d);
  cudaFree(io);
  if (stream) cudaStreamDestroy(stream);
  adamk_destroy(s);
  free(prompt);
  return rc == ADAMK_OK ? 0 : 1;
}
