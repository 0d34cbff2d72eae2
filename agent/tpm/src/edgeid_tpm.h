/*
 * edgeid TPM addon: shared declarations.
 *
 * The addon keeps its C surface narrow: every exported function takes and returns marshaled TPM
 * structures (Buffers) and ESYS_TR handles (numbers); all policy and sequencing lives in TypeScript.
 * The ESYS context is not thread-safe, so every use of it holds ctx->lock. TPM commands run on the
 * libuv thread pool (napi async work); the TLS sign callback (tls_key.cc) calls ESYS synchronously
 * from the main thread while holding the same lock.
 *
 * A context is reference-counted: the JS handle holds one reference, every TLS key installed into a
 * tls.SecureContext holds another, so a SecureContext that outlives the JS handle never dangles.
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

/* TPM commands of the TLS signing path, counted apart from the queue's (commandStats 'tls.*'). */
enum edgeid_tls_command {
  EDGEID_TLS_CONTEXT_LOAD,
  EDGEID_TLS_CREATE_PRIMARY,
  EDGEID_TLS_LOAD,
  EDGEID_TLS_CONTEXT_SAVE,
  EDGEID_TLS_SIGN,
  EDGEID_TLS_FLUSH_CONTEXT,
  EDGEID_TLS_COMMAND_KINDS
};

typedef struct edgeid_tls_stats {
  uint64_t commands[EDGEID_TLS_COMMAND_KINDS];
  uint64_t signatures; /* signatures the TPM produced for TLS handshakes */
  uint64_t failures;   /* sign callbacks that failed (the handshake then fails) */
  uint64_t last_sign_ns; /* duration of the last sign callback, lock wait included */
  uint32_t last_rc;      /* TSS2_RC of the last failure (0 if it was not a TSS error) */
  const char *last_failed; /* what failed last (static string), NULL if nothing failed yet */
} edgeid_tls_stats;

typedef struct edgeid_ctx {
  ESYS_CONTEXT *esys;
  TSS2_TCTI_CONTEXT *tcti;
  pthread_mutex_t lock;
  int closed;
  /* TPM commands sent through the queue (async jobs); read with __atomic_load_n. */
  uint64_t commands;
  /* Written by the TLS sign callback (main thread, `lock` held); read on the main thread. */
  edgeid_tls_stats tls;
  /* The SRK the TS layer keeps resident between batches (ESYS_TR_NONE if none): a TLS key whose
   * saved context is stale is reloaded under it instead of recreating the SRK, which would need a
   * second free object slot. Main thread only (set by tlsSetParent, read by the sign callback). */
  ESYS_TR tls_parent;
  /* References: the JS handle + one per installed TLS key. Main thread only. */
  int refs;
} edgeid_ctx;

/* Live contexts and TLS keys in this process (leak checks in tests). */
extern int edgeid_live_contexts;
extern int edgeid_live_tls_keys;

/* Takes / drops a reference; the last one finalizes ESYS and frees the context. Main thread. */
void edgeid_ctx_ref(edgeid_ctx *ctx);
void edgeid_ctx_unref(edgeid_ctx *ctx);

/* Registers the TLS key functions (tls_key.cc). */
void edgeid_register_tls(napi_env env, napi_value exports);

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
