/*
 * edgeid TPM addon: module init, the ESYS context object and the async job machinery.
 * TPM primitives live in commands.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include "job.h"

/* ---------- context ---------- */

/* Finalizes ESYS and the TCTI (lock held, or the context not yet shared). */
static void ctx_disconnect(edgeid_ctx *ctx) {
  if (ctx->esys) Esys_Finalize(&ctx->esys);
  if (ctx->tcti) Tss2_TctiLdr_Finalize(&ctx->tcti);
}

/* Opens the TCTI of ctx->conf and an ESYS context on it; on failure names the call in *failed. */
static TSS2_RC ctx_connect(edgeid_ctx *ctx, const char **failed) {
  TSS2_RC rc = Tss2_TctiLdr_Initialize(ctx->conf, &ctx->tcti);
  if (rc != TSS2_RC_SUCCESS) {
    *failed = "Tss2_TctiLdr_Initialize";
    return rc;
  }
  rc = Esys_Initialize(&ctx->esys, ctx->tcti, NULL);
  if (rc != TSS2_RC_SUCCESS) {
    *failed = "Esys_Initialize";
    ctx_disconnect(ctx);
  }
  return rc;
}

static void ctx_shutdown(edgeid_ctx *ctx) {
  if (ctx->closed) return;
  ctx->closed = 1;
  ctx_disconnect(ctx);
}

static void ctx_free(edgeid_ctx *ctx) {
  pthread_mutex_destroy(&ctx->lock);
  free(ctx->conf);
  free(ctx);
}

int edgeid_live_contexts = 0;
int edgeid_live_tls_keys = 0;

void edgeid_ctx_ref(edgeid_ctx *ctx) {
  __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL);
}

void edgeid_ctx_unref(edgeid_ctx *ctx) {
  if (__atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  pthread_mutex_lock(&ctx->lock);
  ctx_shutdown(ctx);
  pthread_mutex_unlock(&ctx->lock);
  ctx_free(ctx);
  __atomic_sub_fetch(&edgeid_live_contexts, 1, __ATOMIC_RELAXED);
}

/* The JS handle was garbage-collected: a TLS key still installed somewhere keeps ESYS open. */
static void ctx_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  edgeid_ctx_unref(data);
}

edgeid_ctx *edgeid_ctx_from_value(napi_env env, napi_value value) {
  napi_valuetype type;
  void *data = NULL;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external ||
      napi_get_value_external(env, value, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, "expected a TPM context");
    return NULL;
  }
  return data;
}

/* ---------- helpers ---------- */

int args_get(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    napi_throw_type_error(env, NULL, "missing arguments");
    return 0;
  }
  return 1;
}

int arg_u32(napi_env env, napi_value v, const char *what, uint32_t *out) {
  napi_valuetype type;
  double d;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 4294967295.0 ||
      d != (double)(uint32_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an unsigned 32-bit integer", what);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *out = (uint32_t)d;
  return 1;
}

int arg_view(napi_env env, napi_value v, const char *what, const uint8_t **data, size_t *len) {
  bool is_typed = false;
  napi_typedarray_type type;
  void *ptr = NULL;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, len, &ptr, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a Buffer or Uint8Array", what);
    napi_throw_type_error(env, NULL, msg);
    return 0;
  }
  *data = ptr;
  return 1;
}

int arg_bytes_into(napi_env env, napi_value v, const char *what, uint8_t *dst, size_t cap, uint16_t *len) {
  const uint8_t *src;
  size_t n;
  if (!arg_view(env, v, what, &src, &n)) return 0;
  if (n > cap) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s is longer than %zu bytes", what, cap);
    napi_throw_range_error(env, NULL, msg);
    return 0;
  }
  if (n) memcpy(dst, src, n);
  *len = (uint16_t)n;
  return 1;
}

napi_value make_buffer(napi_env env, const void *data, size_t len) {
  napi_value out;
  void *copy;
  if (napi_create_buffer_copy(env, len, len ? data : "", &copy, &out) != napi_ok) return NULL;
  return out;
}

napi_value make_u32(napi_env env, uint32_t v) {
  napi_value out;
  if (napi_create_uint32(env, v, &out) != napi_ok) return NULL;
  return out;
}

int set_prop(napi_env env, napi_value obj, const char *key, napi_value v) {
  return v != NULL && napi_set_named_property(env, obj, key, v) == napi_ok;
}

/* ---------- jobs ---------- */

job *job_new(napi_env env, napi_value ctx_value, size_t size, job_execute_fn execute,
             job_complete_fn complete, job_release_fn release) {
  edgeid_ctx *ctx = NULL;
  if (ctx_value != NULL) {
    ctx = edgeid_ctx_from_value(env, ctx_value);
    if (ctx == NULL) return NULL;
  }
  job *j = calloc(1, size);
  if (j == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  j->ctx = ctx;
  j->execute = execute;
  j->complete = complete;
  j->release = release;
  /* The job keeps the JS context object (and so the ESYS context) alive until it settles. */
  if (ctx_value != NULL && napi_create_reference(env, ctx_value, 1, &j->ctx_ref) != napi_ok) {
    free(j);
    return NULL;
  }
  return j;
}

static void job_free(napi_env env, job *j) {
  if (j->release) j->release(j);
  if (j->ctx_ref) napi_delete_reference(env, j->ctx_ref);
  if (j->work) napi_delete_async_work(env, j->work);
  free(j);
}

static void job_execute(napi_env env, void *data) {
  (void)env;
  job *j = data;
  if (j->ctx == NULL) { /* only `open` runs without a context; it handles its own locking */
    j->execute(j);
    return;
  }
  if (j->rc != TSS2_RC_SUCCESS) return; /* an argument did not unmarshal: reject with that */
  pthread_mutex_lock(&j->ctx->lock);
  if (j->ctx->closed) {
    j->rc = TSS2_ESYS_RC_BAD_REFERENCE;
    j->failed = "edgeid (TPM context is closed)";
  } else if (edgeid_is_broken(j->ctx) && !j->repairs) {
    j->rc = TSS2_TCTI_RC_NO_CONNECTION;
    j->failed = "edgeid (the TPM connection broke: it must be reconnected)";
  } else {
    j->execute(j);
  }
  pthread_mutex_unlock(&j->ctx->lock);
}

static napi_value make_tpm_error(napi_env env, TSS2_RC rc, const char *command) {
  const char *text = Tss2_RC_Decode(rc);
  char msg[512];
  snprintf(msg, sizeof msg, "%s failed: 0x%x %s", command ? command : "TPM call", rc, text ? text : "");
  napi_value message, err, v;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, message, &err) != napi_ok) return NULL;
  if (napi_create_uint32(env, rc, &v) == napi_ok) napi_set_named_property(env, err, "rc", v);
  if (napi_create_string_utf8(env, command ? command : "", NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, err, "command", v);
  if (napi_create_string_utf8(env, text ? text : "", NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, err, "text", v);
  return err;
}

static void job_complete(napi_env env, napi_status status, void *data) {
  job *j = data;
  napi_value result = NULL;
  if (status != napi_ok) {
    napi_value msg;
    napi_create_string_utf8(env, "TPM job was cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &result);
    napi_reject_deferred(env, j->deferred, result);
  } else if (j->rc != TSS2_RC_SUCCESS) {
    result = make_tpm_error(env, j->rc, j->failed);
    napi_reject_deferred(env, j->deferred, result);
  } else {
    result = j->complete ? j->complete(env, j) : NULL;
    if (result == NULL) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value exc;
        napi_get_and_clear_last_exception(env, &exc);
        napi_reject_deferred(env, j->deferred, exc);
      } else if (j->complete) {
        napi_value msg;
        napi_create_string_utf8(env, "building the TPM result failed", NAPI_AUTO_LENGTH, &msg);
        napi_create_error(env, NULL, msg, &result);
        napi_reject_deferred(env, j->deferred, result);
      } else {
        napi_get_undefined(env, &result);
        napi_resolve_deferred(env, j->deferred, result);
      }
    } else {
      napi_resolve_deferred(env, j->deferred, result);
    }
  }
  job_free(env, j);
}

napi_value job_start(napi_env env, job *j, const char *name) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, job_execute, job_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    /* A deferred that was created but never settled is simply dropped with its promise. */
    job_free(env, j);
    return NULL;
  }
  return promise;
}

/* ---------- open / close / commandCount ---------- */

typedef struct {
  job base;
  char *conf;
  edgeid_ctx *ctx;
} open_job;

static void open_execute(job *base) {
  open_job *j = (open_job *)base;
  edgeid_ctx *ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) {
    base->rc = TSS2_ESYS_RC_MEMORY;
    base->failed = "calloc";
    return;
  }
  pthread_mutex_init(&ctx->lock, NULL);
  ctx->refs = 1;
  ctx->tls_parent = ESYS_TR_NONE;
  ctx->tls_deadline_ms = 5000;
  ctx->conf = strdup(j->conf);
  if (ctx->conf == NULL) {
    base->rc = TSS2_ESYS_RC_MEMORY;
    base->failed = "strdup";
  } else {
    base->rc = ctx_connect(ctx, &base->failed);
  }
  if (base->rc != TSS2_RC_SUCCESS) {
    ctx_free(ctx);
    return;
  }
  edgeid_resolve_peers(ctx->conf, &ctx->peers);
  j->ctx = ctx;
}

static napi_value open_complete(napi_env env, job *base) {
  open_job *j = (open_job *)base;
  napi_value external;
  if (napi_create_external(env, j->ctx, ctx_finalize, NULL, &external) != napi_ok) return NULL;
  j->ctx = NULL; /* now owned by the external */
  __atomic_add_fetch(&edgeid_live_contexts, 1, __ATOMIC_RELAXED);
  return external;
}

static void open_release(job *base) {
  open_job *j = (open_job *)base;
  free(j->conf);
  if (j->ctx) {
    ctx_shutdown(j->ctx);
    ctx_free(j->ctx);
  }
}

/* open(tcti: string) → Promise<context> */
static napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args_get(env, info, 1, argv)) return NULL;
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "tcti must be a string");
    return NULL;
  }
  open_job *j = (open_job *)job_new(env, NULL, sizeof *j, open_execute, open_complete, open_release);
  if (j == NULL) return NULL;
  j->conf = malloc(len + 1);
  if (j->conf == NULL || napi_get_value_string_utf8(env, argv[0], j->conf, len + 1, &len) != napi_ok) {
    free(j->conf);
    free(j);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  return job_start(env, &j->base, "edgeid.tpm.open");
}

/* close(ctx): finalizes ESYS and the TCTI; later jobs on this context fail. Waits for a running job. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args_get(env, info, 1, argv)) return NULL;
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == NULL) return NULL;
  pthread_mutex_lock(&ctx->lock);
  ctx_shutdown(ctx);
  pthread_mutex_unlock(&ctx->lock);
  return NULL;
}

/* abort(ctx) → sockets shut down: ends a TPM read that is blocked on a worker (watchdog.c) and marks
 * the context broken. Takes no lock (the blocked worker holds it). */
static napi_value js_abort(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args_get(env, info, 1, argv)) return NULL;
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == NULL) return NULL;
  return make_u32(env, (uint32_t)edgeid_abort_io(ctx));
}

/* isBroken(ctx) → true after abort (by the TS layer or the TLS watchdog) until a reconnect. */
static napi_value js_is_broken(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  if (!args_get(env, info, 1, argv)) return NULL;
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == NULL) return NULL;
  if (napi_get_boolean(env, edgeid_is_broken(ctx) != 0, &out) != napi_ok) return NULL;
  return out;
}

/* reconnect(ctx) → Promise<void>: a new TCTI and ESYS context in place of the old ones (whose ESYS_TR
 * handles all become invalid). Waits for the lock like any job. */
static void reconnect_execute(job *j) {
  edgeid_ctx *ctx = j->ctx;
  ctx_disconnect(ctx);
  __atomic_store_n(&ctx->broken, 1, __ATOMIC_RELEASE);
  ctx->tls_parent = ESYS_TR_NONE; /* a handle of the old ESYS context (read under the lock) */
  j->rc = ctx_connect(ctx, &j->failed);
  if (j->rc == TSS2_RC_SUCCESS) __atomic_store_n(&ctx->broken, 0, __ATOMIC_RELEASE);
}

static napi_value reconnect_complete(napi_env env, job *j) {
  (void)j;
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  return undefined;
}

static napi_value js_reconnect(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args_get(env, info, 1, argv)) return NULL;
  job *j = job_new(env, argv[0], sizeof(job), reconnect_execute, reconnect_complete, NULL);
  if (j == NULL) return NULL;
  j->repairs = 1;
  return job_start(env, j, "edgeid.tpm.reconnect");
}

/* setTlsDeadline(ctx, ms): how long one TLS signature may take, waiting for the TPM included. */
static napi_value js_set_tls_deadline(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint32_t ms;
  if (!args_get(env, info, 2, argv) || !arg_u32(env, argv[1], "ms", &ms)) return NULL;
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == NULL) return NULL;
  if (ms == 0) {
    napi_throw_range_error(env, NULL, "the TLS signing deadline must be at least 1 ms");
    return NULL;
  }
  ctx->tls_deadline_ms = ms;
  return NULL;
}

/* commandCount(ctx) → number of TPM commands sent through this context. */
static napi_value js_command_count(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  if (!args_get(env, info, 1, argv)) return NULL;
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == NULL) return NULL;
  uint64_t n = __atomic_load_n(&ctx->commands, __ATOMIC_RELAXED);
  if (napi_create_double(env, (double)n, &out) != napi_ok) return NULL;
  return out;
}

/* decodeRc(rc) → text, for errors raised outside the addon. */
static napi_value js_decode_rc(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  uint32_t rc;
  if (!args_get(env, info, 1, argv) || !arg_u32(env, argv[0], "rc", &rc)) return NULL;
  if (napi_create_string_utf8(env, Tss2_RC_Decode(rc), NAPI_AUTO_LENGTH, &out) != napi_ok) return NULL;
  return out;
}

/* liveObjects() → { contexts, tlsKeys }: what this process still holds (leak checks in tests). */
static napi_value js_live_objects(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok ||
      !set_prop(env, o, "contexts", make_u32(env, (uint32_t)__atomic_load_n(&edgeid_live_contexts, __ATOMIC_RELAXED))) ||
      !set_prop(env, o, "tlsKeys", make_u32(env, (uint32_t)__atomic_load_n(&edgeid_live_tls_keys, __ATOMIC_RELAXED))))
    return NULL;
  return o;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"open", NULL, js_open, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, js_abort, NULL, NULL, NULL, napi_default, NULL},
      {"isBroken", NULL, js_is_broken, NULL, NULL, NULL, napi_default, NULL},
      {"reconnect", NULL, js_reconnect, NULL, NULL, NULL, napi_default, NULL},
      {"setTlsDeadline", NULL, js_set_tls_deadline, NULL, NULL, NULL, napi_default, NULL},
      {"commandCount", NULL, js_command_count, NULL, NULL, NULL, napi_default, NULL},
      {"decodeRc", NULL, js_decode_rc, NULL, NULL, NULL, napi_default, NULL},
      {"liveObjects", NULL, js_live_objects, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  edgeid_register_commands(env, exports);
  edgeid_register_tls(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
