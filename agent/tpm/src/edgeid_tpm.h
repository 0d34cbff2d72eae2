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
#include <sys/socket.h>
#include <time.h>
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

/* Where the TPM listens, for edgeid_abort_io (swtpm/mssim TCTIs; none for the device TCTI). */
#define EDGEID_MAX_PEERS 4
typedef struct edgeid_tpm_peers {
  int count;
  struct sockaddr_storage addr[EDGEID_MAX_PEERS];
  socklen_t len[EDGEID_MAX_PEERS];
} edgeid_tpm_peers;

typedef struct edgeid_ctx {
  ESYS_CONTEXT *esys;
  TSS2_TCTI_CONTEXT *tcti;
  pthread_mutex_t lock;
  int closed;
  /* The TCTI configuration (reconnect opens it again) and the TPM's address; set at open. */
  char *conf;
  edgeid_tpm_peers peers;
  /* Set (atomically, from any thread, without the lock) by edgeid_abort_io; cleared by a reconnect.
   * Commands on a broken context fail at once: its ESYS state is lost. */
  int broken;
  /* How long the TLS signing callback may take, waiting for the lock included (ms). Main thread. */
  uint32_t tls_deadline_ms;
  /* TPM commands sent through the queue (async jobs); read with __atomic_load_n. */
  uint64_t commands;
  /* Written by the TLS sign callback and read, on the main thread only. */
  edgeid_tls_stats tls;
  /* The SRK the TS layer keeps resident between batches (ESYS_TR_NONE if none): a TLS key whose
   * saved context is stale is reloaded under it instead of recreating the SRK, which would need a
   * second free object slot. Set by tlsSetParent (main thread), read by the sign callback (main thread,
   * lock held), cleared by a reconnect (lock held; the TS layer has forgotten its residents then). */
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

/* watchdog.c: the TPM's address from a TCTI configuration (worker thread, at open); ending a
 * blocked TPM read from another thread (marks ctx broken; returns the sockets shut down); the
 * watchdog that does it when the TLS signing callback passes its deadline. */
void edgeid_resolve_peers(const char *conf, edgeid_tpm_peers *peers);
int edgeid_abort_io(edgeid_ctx *ctx);
int edgeid_watchdog_arm(edgeid_ctx *ctx, const struct timespec *deadline);
void edgeid_watchdog_disarm(void);

static inline int edgeid_is_broken(edgeid_ctx *ctx) {
  return __atomic_load_n(&ctx->broken, __ATOMIC_ACQUIRE);
}

/* Counts one TPM command on ctx (thread-safe). */
static inline void edgeid_count_command(edgeid_ctx *ctx) {
  __atomic_add_fetch(&ctx->commands, 1, __ATOMIC_RELAXED);
}

#ifdef __cplusplus
}
#endif

#endif
