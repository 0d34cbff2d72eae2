/*
 * edgeid TPM addon: shared declarations.
 *
 * The addon keeps its C surface narrow: every exported function takes and returns marshaled TPM
 * structures (Buffers) and ESYS_TR handles (numbers); all policy and sequencing lives in TypeScript.
 * The ESYS context is not thread-safe, so every use of it holds ctx->lock. TPM commands run on the
 * libuv thread pool (napi async work); a later TLS sign callback may call ESYS synchronously from
 * the main thread while holding the same lock.
 */
#ifndef EDGEID_TPM_H
#define EDGEID_TPM_H

#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <tss2/tss2_esys.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edgeid_ctx {
  ESYS_CONTEXT *esys;
  TSS2_TCTI_CONTEXT *tcti;
  pthread_mutex_t lock;
  int closed;
  /* TPM commands sent through this context; read with __atomic_load_n. */
  uint64_t commands;
} edgeid_ctx;

/* Returns the context behind a JS handle, or NULL (with a pending JS exception). */
edgeid_ctx *edgeid_ctx_from_value(napi_env env, napi_value value);

/* Counts one TPM command on ctx (thread-safe). */
static inline void edgeid_count_command(edgeid_ctx *ctx) {
  __atomic_add_fetch(&ctx->commands, 1, __ATOMIC_RELAXED);
}

#ifdef __cplusplus
}
#endif

#endif
