/*
 * Async TPM jobs: a job is created on the main thread (arguments copied out of JS), executed on
 * the libuv thread pool with ctx->lock held, and settles a promise back on the main thread.
 * A failure records the TSS2_RC and the name of the function that returned it; the promise is
 * then rejected with an Error carrying { rc, command, text } (text from Tss2_RC_Decode).
 */
#ifndef EDGEID_JOB_H
#define EDGEID_JOB_H

#include <stddef.h>
#include <tss2/tss2_mu.h>

#include "edgeid_tpm.h"

typedef struct job job;
typedef void (*job_execute_fn)(job *j);                       /* worker thread, lock held */
typedef napi_value (*job_complete_fn)(napi_env env, job *j);  /* main thread, only on success */
typedef void (*job_release_fn)(job *j);                       /* main thread, always */

struct job {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref ctx_ref;
  edgeid_ctx *ctx;
  TSS2_RC rc;         /* set before execution when an argument did not unmarshal: then not executed */
  const char *failed;
  job_execute_fn execute;
  job_complete_fn complete;
  job_release_fn release;
  int repairs; /* runs on a broken context (reconnect); every other job fails on one at once */
};

/* Allocates a zeroed job of `size` bytes (a struct whose first member is `job base`) bound to the
 * context `ctx_value`. Returns NULL with a pending JS exception on failure. */
job *job_new(napi_env env, napi_value ctx_value, size_t size, job_execute_fn execute,
             job_complete_fn complete, job_release_fn release);

/* Queues the job and returns its promise; frees the job on failure. */
napi_value job_start(napi_env env, job *j, const char *name);

/* Argument helpers; each returns 0 and throws a TypeError on bad input. */
int arg_u32(napi_env env, napi_value v, const char *what, uint32_t *out);
/* A view of a Buffer/Uint8Array argument (valid during the call only: copy what the job keeps). */
int arg_view(napi_env env, napi_value v, const char *what, const uint8_t **data, size_t *len);
int arg_bytes_into(napi_env env, napi_value v, const char *what, uint8_t *dst, size_t cap, uint16_t *len);
int args_get(napi_env env, napi_callback_info info, size_t want, napi_value *argv);

/* Result helpers (return NULL if N-API fails; the caller's promise then rejects). */
napi_value make_buffer(napi_env env, const void *data, size_t len);
napi_value make_u32(napi_env env, uint32_t v);
int set_prop(napi_env env, napi_value obj, const char *key, napi_value v);

/* Records a failed TSS call on the job and returns from the execute function. A TPM command also
 * counts towards ctx->commands (whether it succeeds or not). */
#define TPM_COMMAND(j, name, call)                                                        \
  do {                                                                                    \
    edgeid_count_command((j)->ctx);                                                       \
    TSS2_RC rc_ = (call);                                                                 \
    if (rc_ != TSS2_RC_SUCCESS) {                                                         \
      (j)->rc = rc_;                                                                      \
      (j)->failed = (name);                                                               \
      return;                                                                             \
    }                                                                                     \
  } while (0)

#define TSS_CALL(j, name, call)                                                           \
  do {                                                                                    \
    TSS2_RC rc_ = (call);                                                                 \
    if (rc_ != TSS2_RC_SUCCESS) {                                                         \
      (j)->rc = rc_;                                                                      \
      (j)->failed = (name);                                                               \
      return;                                                                             \
    }                                                                                     \
  } while (0)

/* Marshals a TSS structure into a fixed-size byte array field `dst` with length `dst_len`. */
#define MARSHAL_INTO(j, T, src, dst, dst_len)                                             \
  do {                                                                                    \
    size_t off_ = 0;                                                                      \
    TSS2_RC rc_ = Tss2_MU_##T##_Marshal((src), (dst), sizeof(dst), &off_);                \
    if (rc_ != TSS2_RC_SUCCESS && (j)->rc == TSS2_RC_SUCCESS) {                           \
      (j)->rc = rc_;                                                                      \
      (j)->failed = "Tss2_MU_" #T "_Marshal";                                             \
    }                                                                                     \
    (dst_len) = off_;                                                                     \
  } while (0)

void edgeid_register_commands(napi_env env, napi_value exports);

#endif
