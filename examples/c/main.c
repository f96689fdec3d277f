/* Decode with a generated MegaKernel from C: load packed weights, feed a prompt, print the
 * greedy continuation as token ids.
 *
 *   make KERNEL_DIR=~/.cache/ada_mk/build/adamk_smollm2_135m_h100_bs1-<key>
 *   ./decode weights.bin 16 504 3575 282 4649 314      # "The capital of France is" (SmolLM2)
 *
 * weights.bin is the packed bf16 buffer for this kernel's layout, written by
 *   adamk-pack --weights SmolLM2.gguf --library <KERNEL_DIR>/lib<kernel>.so -o weights.bin
 * The kernel's header (<kernel>.h, next to the library) is force-included by the Makefile
 * (-include), so this file works for any kernel: it only uses the ADAMK_* names the header defines.
 * Every sequence of the batch gets the same prompt.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef ADAMK_BATCH
#error "compile with -include <kernel>.h (see the Makefile)"
#endif

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
  size_t size = 0;
  void* weights = read_file(argv[1], &size);
  if (!weights) { perror(argv[1]); return 1; }
  if (size != ADAMK_WEIGHTS_BYTES) {
    fprintf(stderr, "%s: %zu bytes; this kernel (%s) needs %zu\n", argv[1], size, ADAMK_KERNEL_NAME,
            (size_t)ADAMK_WEIGHTS_BYTES);
    free(weights);
    return 1;
  }

  adamk_session* s = NULL;
  int rc = adamk_create(weights, size, /*device=*/0, /*weights_on_device=*/0, &s);
  free(weights);  /* adamk_create copied it to the GPU */
  if (rc != ADAMK_OK) { fprintf(stderr, "adamk_create: %s\n", adamk_last_error()); return 1; }

  int32_t tokens[ADAMK_BATCH], positions[ADAMK_BATCH], next[ADAMK_BATCH];
  for (int t = 0; t < n_prompt + n_new - 1 && rc == ADAMK_OK; ++t) {
    for (int b = 0; b < ADAMK_BATCH; ++b) {
      tokens[b] = t < n_prompt ? (int32_t)atoi(argv[3 + t]) : next[b];
      positions[b] = t;
    }
    rc = adamk_decode(s, tokens, positions, next, NULL);
    if (rc == ADAMK_OK && t >= n_prompt - 1) printf("%d%c", next[0], t == n_prompt + n_new - 2 ? '\n' : ' ');
    fflush(stdout);
  }
  if (rc != ADAMK_OK) fprintf(stderr, "adamk_decode: %s\n", adamk_last_error());
  adamk_destroy(s);
  return rc == ADAMK_OK ? 0 : 1;
}
