/*
 * TPM primitives. Each takes the context first, copies its arguments on the main thread, runs one
 * short ESYS sequence on the thread pool and resolves with marshaled bytes / ESYS_TR numbers.
 * Object authorisation is always the (empty) password; the only policy session is the EK's in
 * activateCredential, whose digests TypeScript works out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

#define NONE ESYS_TR_NONE
#define PW ESYS_TR_PASSWORD

/* A fixed-size output field: the marshaled bytes of one TSS structure. */
#define OUT_FIELD(T, name) \
  uint8_t name[sizeof(T)]; \
  size_t name##_len

static const TPM2B_SENSITIVE_CREATE EMPTY_SENSITIVE = {0};
static const TPM2B_DATA EMPTY_OUTSIDE_INFO = {0};
static const TPML_PCR_SELECTION EMPTY_CREATION_PCR = {0};

/* The inputs of each primitive, copied (TPM structures unmarshaled) from JS on the main thread. */
typedef union {
  struct { ESYS_TR hierarchy; TPM2B_PUBLIC template; } create_primary;
  struct { ESYS_TR parent; TPM2B_PUBLIC template; } create; /* create and createLoaded */
  struct { ESYS_TR parent; TPM2B_PRIVATE private; TPM2B_PUBLIC public; } load;
  /* flush, trClose, readPublic, nvReadPublic, contextSave */
  struct { ESYS_TR handle; } object;
  struct { TPM2_HANDLE tpm_handle; } tr_from_public;
  struct { ESYS_TR key; TPMI_ALG_SIG_SCHEME scheme; TPMI_ALG_HASH hash; TPM2B_DIGEST digest; } sign;
  struct { ESYS_TR ak; TPM2B_DATA qualifying; TPML_PCR_SELECTION selection; } quote;
  struct { ESYS_TR object; ESYS_TR ak; TPM2B_DATA qualifying; } certify;
  struct {
    ESYS_TR ak;
    ESYS_TR ek;
    TPM2B_ID_OBJECT credential_blob;
    TPM2B_ENCRYPTED_SECRET encrypted_secret;
    TPMI_ALG_HASH policy_hash; /* 0: the EK's authValue, no policy session */
    TPML_DIGEST or_digests;
  } activate;
  struct { TPML_PCR_SELECTION selection; } pcr_read;
  struct { uint32_t index; TPMI_ALG_HASH hash; TPM2B_DIGEST digest; } pcr_extend;
  struct { UINT16 bytes; } get_random;
  struct { TPM2_CAP capability; uint32_t property; uint32_t count; } get_capability;
  struct { ESYS_TR auth; ESYS_TR nv_index; UINT16 size; UINT16 offset; } nv_read;
  struct { TPMS_CONTEXT saved; } context_load;
} cmd_args;

/* One job layout serves all primitives: inputs in `args` (the member named after the primitive),
 * outputs in the typed fields. */
typedef struct {
  job base;
  cmd_args args;
  ESYS_TR handle;
  OUT_FIELD(TPM2B_PUBLIC, pub);
  OUT_FIELD(TPM2B_PRIVATE, priv);
  OUT_FIELD(TPM2B_NAME, name);
  OUT_FIELD(TPMT_SIGNATURE, sig);
  OUT_FIELD(TPMS_ATTEST, attest);
  OUT_FIELD(TPMS_CONTEXT, context);
  OUT_FIELD(TPML_PCR_SELECTION, selection);
  TPML_DIGEST digests; /* pcrRead */
  UINT32 update_counter; /* pcrRead */
  TPMS_CAPABILITY_DATA cap;
  TPMI_YES_NO more;
  TPMS_NV_PUBLIC nv;
  uint8_t *data; /* variable-size output (nvRead, getRandom, activateCredential) */
  size_t data_len;
} cmd_job;

static void cmd_release(job *base) {
  cmd_job *j = (cmd_job *)base;
  free(j->data);
}

/* arg_TPM2B_PUBLIC(env, value, what, job, out) etc.: a whole byte argument unmarshaled into a TSS
 * structure (trailing bytes are an error). A malformed structure does not throw: it is recorded on
 * the job, whose promise then rejects with the MU error like a failed TSS call. Returns 0 (with a
 * TypeError pending) only if the value is not bytes. */
#define DEFINE_ARG_STRUCT(T)                                                                        \
  static int arg_##T(napi_env env, napi_value v, const char *what, cmd_job *j, T *out) {           \
    const uint8_t *data;                                                                            \
    size_t len, off = 0;                                                                            \
    if (!arg_view(env, v, what, &data, &len)) return 0;                                             \
    TSS2_RC rc = Tss2_MU_##T##_Unmarshal(data, len, &off, out);                                     \
    if (rc == TSS2_RC_SUCCESS && off != len) rc = TSS2_MU_RC_BAD_SIZE;                              \
    if (rc != TSS2_RC_SUCCESS && j->base.rc == TSS2_RC_SUCCESS) {                                   \
      j->base.rc = rc;                                                                              \
      j->base.failed = "Tss2_MU_" #T "_Unmarshal";                                                  \
    }                                                                                               \
    return 1;                                                                                       \
  }
DEFINE_ARG_STRUCT(TPM2B_PUBLIC)
DEFINE_ARG_STRUCT(TPM2B_PRIVATE)
DEFINE_ARG_STRUCT(TPML_PCR_SELECTION)
DEFINE_ARG_STRUCT(TPM2B_ID_OBJECT)
DEFINE_ARG_STRUCT(TPM2B_ENCRYPTED_SECRET)
DEFINE_ARG_STRUCT(TPMS_CONTEXT)

/* A 16-bit argument (an algorithm identifier, a size). */
static int arg_u16(napi_env env, napi_value v, const char *what, UINT16 *out) {
  uint32_t x;
  if (!arg_u32(env, v, what, &x)) return 0;
  if (x > 0xffff) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an unsigned 16-bit integer", what);
    napi_throw_range_error(env, NULL, msg);
    return 0;
  }
  *out = (UINT16)x;
  return 1;
}

static cmd_job *cmd_new(napi_env env, napi_value ctx, job_execute_fn exec, job_complete_fn done) {
  return (cmd_job *)job_new(env, ctx, sizeof(cmd_job), exec, done, cmd_release);
}

/* Drops a job whose arguments were rejected (a JS exception is pending). */
static napi_value fail_job(napi_env env, cmd_job *j) {
  cmd_release(&j->base);
  if (j->base.ctx_ref) napi_delete_reference(env, j->base.ctx_ref);
  free(j);
  return NULL;
}

static int set_data(cmd_job *j, const uint8_t *src, size_t len) {
  j->data = malloc(len ? len : 1);
  if (j->data == NULL) {
    j->base.rc = TSS2_ESYS_RC_MEMORY;
    j->base.failed = "malloc";
    return 0;
  }
  if (len) memcpy(j->data, src, len);
  j->data_len = len;
  return 1;
}

static napi_value new_object(napi_env env) {
  napi_value o;
  return napi_create_object(env, &o) == napi_ok ? o : NULL;
}

/* ---------- createPrimary(ctx, hierarchyTr, template: TPM2B_PUBLIC) → {handle, public} ---------- */

static void create_primary_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_PUBLIC *out = NULL;
  TPM2B_CREATION_DATA *cdata = NULL;
  TPM2B_DIGEST *chash = NULL;
  TPMT_TK_CREATION *ticket = NULL;
  TPM_COMMAND(base, "Esys_CreatePrimary",
              Esys_CreatePrimary(base->ctx->esys, j->args.create_primary.hierarchy, PW, NONE, NONE, &EMPTY_SENSITIVE,
                                 &j->args.create_primary.template,
                                 &EMPTY_OUTSIDE_INFO, &EMPTY_CREATION_PCR, &j->handle, &out, &cdata,
                                 &chash, &ticket));
  MARSHAL_INTO(base, TPM2B_PUBLIC, out, j->pub, j->pub_len);
  Esys_Free(out);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
}

static napi_value handle_public_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env);
  if (o == NULL || !set_prop(env, o, "handle", make_u32(env, j->handle)) ||
      !set_prop(env, o, "public", make_buffer(env, j->pub, j->pub_len)))
    return NULL;
  if (j->priv_len && !set_prop(env, o, "private", make_buffer(env, j->priv, j->priv_len))) return NULL;
  return o;
}

static napi_value js_create_primary(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args_get(env, info, 3, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], create_primary_exec, handle_public_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "hierarchy", &j->args.create_primary.hierarchy)) goto fail;
  if (!arg_TPM2B_PUBLIC(env, argv[2], "template", j, &j->args.create_primary.template)) goto fail;
  return job_start(env, &j->base, "edgeid.tpm.createPrimary");
fail:
  return fail_job(env, j);
}

/* ---------- create(ctx, parentTr, template) → {public, private} ---------- */

static void create_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_PRIVATE *priv = NULL;
  TPM2B_PUBLIC *pub = NULL;
  TPM2B_CREATION_DATA *cdata = NULL;
  TPM2B_DIGEST *chash = NULL;
  TPMT_TK_CREATION *ticket = NULL;
  TPM_COMMAND(base, "Esys_Create",
              Esys_Create(base->ctx->esys, j->args.create.parent, PW, NONE, NONE, &EMPTY_SENSITIVE, &j->args.create.template,
                          &EMPTY_OUTSIDE_INFO, &EMPTY_CREATION_PCR, &priv, &pub, &cdata, &chash, &ticket));
  MARSHAL_INTO(base, TPM2B_PUBLIC, pub, j->pub, j->pub_len);
  MARSHAL_INTO(base, TPM2B_PRIVATE, priv, j->priv, j->priv_len);
  Esys_Free(priv);
  Esys_Free(pub);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
}

static napi_value public_private_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env);
  if (o == NULL || !set_prop(env, o, "public", make_buffer(env, j->pub, j->pub_len)) ||
      !set_prop(env, o, "private", make_buffer(env, j->priv, j->priv_len)))
    return NULL;
  return o;
}

static napi_value js_create(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args_get(env, info, 3, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], create_exec, public_private_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "parent", &j->args.create.parent)) goto fail;
  if (!arg_TPM2B_PUBLIC(env, argv[2], "template", j, &j->args.create.template)) goto fail;
  return job_start(env, &j->base, "edgeid.tpm.create");
fail:
  return fail_job(env, j);
}

/* ---------- createLoaded(ctx, parentTr, template) → {handle, public, private} ---------- */

static void create_loaded_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  /* CreateLoaded takes the bare TPMT_PUBLIC inside a TPM2B_TEMPLATE. */
  TPM2B_TEMPLATE tmpl = {0};
  size_t off = 0;
  TSS_CALL(base, "Tss2_MU_TPMT_PUBLIC_Marshal",
           Tss2_MU_TPMT_PUBLIC_Marshal(&j->args.create.template.publicArea, tmpl.buffer, sizeof tmpl.buffer, &off));
  tmpl.size = (UINT16)off;
  TPM2B_PRIVATE *priv = NULL;
  TPM2B_PUBLIC *pub = NULL;
  TPM_COMMAND(base, "Esys_CreateLoaded",
              Esys_CreateLoaded(base->ctx->esys, j->args.create.parent, PW, NONE, NONE, &EMPTY_SENSITIVE, &tmpl,
                                &j->handle, &priv, &pub));
  MARSHAL_INTO(base, TPM2B_PUBLIC, pub, j->pub, j->pub_len);
  MARSHAL_INTO(base, TPM2B_PRIVATE, priv, j->priv, j->priv_len);
  Esys_Free(priv);
  Esys_Free(pub);
}

static napi_value js_create_loaded(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args_get(env, info, 3, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], create_loaded_exec, handle_public_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "parent", &j->args.create.parent)) goto fail;
  if (!arg_TPM2B_PUBLIC(env, argv[2], "template", j, &j->args.create.template)) goto fail;
  return job_start(env, &j->base, "edgeid.tpm.createLoaded");
fail:
  return fail_job(env, j);
}

/* ---------- load(ctx, parentTr, private, public) → handle ---------- */

static void load_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM_COMMAND(base, "Esys_Load",
              Esys_Load(base->ctx->esys, j->args.load.parent, PW, NONE, NONE, &j->args.load.private,
                        &j->args.load.public, &j->handle));
}

static napi_value handle_complete(napi_env env, job *base) {
  return make_u32(env, ((cmd_job *)base)->handle);
}

static napi_value js_load(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args_get(env, info, 4, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], load_exec, handle_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "parent", &j->args.load.parent)) goto fail;
  if (!arg_TPM2B_PRIVATE(env, argv[2], "private", j, &j->args.load.private)) goto fail;
  if (!arg_TPM2B_PUBLIC(env, argv[3], "public", j, &j->args.load.public)) goto fail;
  return job_start(env, &j->base, "edgeid.tpm.load");
fail:
  return fail_job(env, j);
}

/* ---------- flush(ctx, tr) / trClose(ctx, tr) / trFromTpmPublic(ctx, tpmHandle) ---------- */

static void flush_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM_COMMAND(base, "Esys_FlushContext", Esys_FlushContext(base->ctx->esys, j->args.object.handle));
}

static void tr_close_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  ESYS_TR tr = j->args.object.handle;
  TSS_CALL(base, "Esys_TR_Close", Esys_TR_Close(base->ctx->esys, &tr));
}

static void tr_from_public_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM_COMMAND(base, "Esys_TR_FromTPMPublic",
              Esys_TR_FromTPMPublic(base->ctx->esys, j->args.tr_from_public.tpm_handle, NONE, NONE, NONE, &j->handle));
}

/* A primitive whose one argument is an object's ESYS_TR (args.object). */
static napi_value one_handle_command(napi_env env, napi_callback_info info, const char *what, job_execute_fn exec,
                                     job_complete_fn done, const char *name) {
  napi_value argv[2];
  if (!args_get(env, info, 2, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], exec, done);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], what, &j->args.object.handle)) return fail_job(env, j);
  return job_start(env, &j->base, name);
}

static napi_value js_flush(napi_env env, napi_callback_info info) {
  return one_handle_command(env, info, "handle", flush_exec, NULL, "edgeid.tpm.flush");
}

static napi_value js_tr_close(napi_env env, napi_callback_info info) {
  return one_handle_command(env, info, "handle", tr_close_exec, NULL, "edgeid.tpm.trClose");
}

static napi_value js_tr_from_tpm_public(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args_get(env, info, 2, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], tr_from_public_exec, handle_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "tpmHandle", &j->args.tr_from_public.tpm_handle)) return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.trFromTpmPublic");
}

/* ---------- readPublic(ctx, tr) → {public, name} ---------- */

static void read_public_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_PUBLIC *pub = NULL;
  TPM2B_NAME *name = NULL, *qname = NULL;
  TPM_COMMAND(base, "Esys_ReadPublic", Esys_ReadPublic(base->ctx->esys, j->args.object.handle, NONE, NONE, NONE, &pub, &name, &qname));
  MARSHAL_INTO(base, TPM2B_PUBLIC, pub, j->pub, j->pub_len);
  memcpy(j->name, name->name, name->size);
  j->name_len = name->size;
  Esys_Free(pub);
  Esys_Free(name);
  Esys_Free(qname);
}

static napi_value read_public_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env);
  if (o == NULL || !set_prop(env, o, "public", make_buffer(env, j->pub, j->pub_len)) ||
      !set_prop(env, o, "name", make_buffer(env, j->name, j->name_len)))
    return NULL;
  return o;
}

static napi_value js_read_public(napi_env env, napi_callback_info info) {
  return one_handle_command(env, info, "handle", read_public_exec, read_public_complete, "edgeid.tpm.readPublic");
}

/* ---------- sign(ctx, keyTr, digest, schemeAlg, hashAlg) → TPMT_SIGNATURE ---------- */

static void sign_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPMT_SIG_SCHEME scheme = {.scheme = j->args.sign.scheme};
  scheme.details.any.hashAlg = j->args.sign.hash;
  /* A NULL ticket: only valid for unrestricted keys, which is all we sign external digests with. */
  TPMT_TK_HASHCHECK validation = {.tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL};
  TPMT_SIGNATURE *sig = NULL;
  TPM_COMMAND(base, "Esys_Sign",
              Esys_Sign(base->ctx->esys, j->args.sign.key, PW, NONE, NONE, &j->args.sign.digest, &scheme, &validation, &sig));
  MARSHAL_INTO(base, TPMT_SIGNATURE, sig, j->sig, j->sig_len);
  Esys_Free(sig);
}

static napi_value sig_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  return make_buffer(env, j->sig, j->sig_len);
}

static napi_value js_sign(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args_get(env, info, 5, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], sign_exec, sig_complete);
  if (j == NULL) return NULL;
  TPM2B_DIGEST *digest = &j->args.sign.digest;
  if (!arg_u32(env, argv[1], "key", &j->args.sign.key) ||
      !arg_bytes_into(env, argv[2], "digest", digest->buffer, sizeof digest->buffer, &digest->size) ||
      !arg_u16(env, argv[3], "schemeAlg", &j->args.sign.scheme) || !arg_u16(env, argv[4], "hashAlg", &j->args.sign.hash))
    return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.sign");
}

/* ---------- quote(ctx, akTr, qualifyingData, TPML_PCR_SELECTION) → {attest, signature} ---------- */

static void store_attest(cmd_job *j, TPM2B_ATTEST *attest, TPMT_SIGNATURE *sig) {
  memcpy(j->attest, attest->attestationData, attest->size);
  j->attest_len = attest->size;
  MARSHAL_INTO(&j->base, TPMT_SIGNATURE, sig, j->sig, j->sig_len);
}

static void quote_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL}; /* the AK's own scheme */
  TPM2B_ATTEST *attest = NULL;
  TPMT_SIGNATURE *sig = NULL;
  TPM_COMMAND(base, "Esys_Quote",
              Esys_Quote(base->ctx->esys, j->args.quote.ak, PW, NONE, NONE, &j->args.quote.qualifying, &scheme,
                         &j->args.quote.selection, &attest, &sig));
  store_attest(j, attest, sig);
  Esys_Free(attest);
  Esys_Free(sig);
}

static napi_value attest_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env);
  if (o == NULL || !set_prop(env, o, "attest", make_buffer(env, j->attest, j->attest_len)) ||
      !set_prop(env, o, "signature", make_buffer(env, j->sig, j->sig_len)))
    return NULL;
  return o;
}

static napi_value js_quote(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args_get(env, info, 4, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], quote_exec, attest_complete);
  if (j == NULL) return NULL;
  TPM2B_DATA *qualifying = &j->args.quote.qualifying;
  if (!arg_u32(env, argv[1], "ak", &j->args.quote.ak) ||
      !arg_bytes_into(env, argv[2], "qualifyingData", qualifying->buffer, sizeof qualifying->buffer, &qualifying->size) ||
      !arg_TPML_PCR_SELECTION(env, argv[3], "selection", j, &j->args.quote.selection))
    return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.quote");
}

/* ---------- certify(ctx, objectTr, akTr, qualifyingData) → {attest, signature} ---------- */

static void certify_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_NULL};
  TPM2B_ATTEST *attest = NULL;
  TPMT_SIGNATURE *sig = NULL;
  TPM_COMMAND(base, "Esys_Certify",
              Esys_Certify(base->ctx->esys, j->args.certify.object, j->args.certify.ak, PW, PW, NONE,
                           &j->args.certify.qualifying, &scheme, &attest, &sig));
  store_attest(j, attest, sig);
  Esys_Free(attest);
  Esys_Free(sig);
}

static napi_value js_certify(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args_get(env, info, 4, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], certify_exec, attest_complete);
  if (j == NULL) return NULL;
  TPM2B_DATA *qualifying = &j->args.certify.qualifying;
  if (!arg_u32(env, argv[1], "object", &j->args.certify.object) || !arg_u32(env, argv[2], "ak", &j->args.certify.ak) ||
      !arg_bytes_into(env, argv[3], "qualifyingData", qualifying->buffer, sizeof qualifying->buffer, &qualifying->size))
    return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.certify");
}

/* ---------- activateCredential(ctx, akTr, ekTr, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET,
 *            policyHashAlg, orDigests[]) → secret
 * policyHashAlg 0: the EK is authorised by its (empty) authValue. Otherwise a policy session with
 * that hash runs PolicySecret(TPM_RH_ENDORSEMENT) and, if orDigests is not empty, PolicyOR over
 * them; the session is always flushed. ---------- */

static void activate_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  ESYS_CONTEXT *esys = base->ctx->esys;
  const TPMI_ALG_HASH policy_hash = j->args.activate.policy_hash;

  ESYS_TR session = NONE;
  TSS2_RC rc = TSS2_RC_SUCCESS;
  const char *failed = NULL;
  TPM2B_DIGEST *cert_info = NULL;
  if (policy_hash != 0) {
    TPMT_SYM_DEF sym = {.algorithm = TPM2_ALG_NULL};
    edgeid_count_command(base->ctx);
    rc = Esys_StartAuthSession(esys, NONE, NONE, NONE, NONE, NONE, NULL, TPM2_SE_POLICY, &sym,
                               policy_hash, &session);
    if (rc != TSS2_RC_SUCCESS) {
      failed = "Esys_StartAuthSession";
      session = NONE;
      goto out;
    }
    rc = Esys_TRSess_SetAttributes(esys, session, TPMA_SESSION_CONTINUESESSION, 0xff);
    if (rc != TSS2_RC_SUCCESS) {
      failed = "Esys_TRSess_SetAttributes";
      goto out;
    }
    TPM2B_TIMEOUT *timeout = NULL;
    TPMT_TK_AUTH *ticket = NULL;
    edgeid_count_command(base->ctx);
    rc = Esys_PolicySecret(esys, ESYS_TR_RH_ENDORSEMENT, session, PW, NONE, NONE, NULL, NULL, NULL, 0,
                           &timeout, &ticket);
    Esys_Free(timeout);
    Esys_Free(ticket);
    if (rc != TSS2_RC_SUCCESS) {
      failed = "Esys_PolicySecret";
      goto out;
    }
    if (j->args.activate.or_digests.count > 0) {
      edgeid_count_command(base->ctx);
      rc = Esys_PolicyOR(esys, session, NONE, NONE, NONE, &j->args.activate.or_digests);
      if (rc != TSS2_RC_SUCCESS) {
        failed = "Esys_PolicyOR";
        goto out;
      }
    }
  }
  edgeid_count_command(base->ctx);
  rc = Esys_ActivateCredential(esys, j->args.activate.ak, j->args.activate.ek, PW, policy_hash != 0 ? session : PW,
                               NONE, &j->args.activate.credential_blob, &j->args.activate.encrypted_secret,
                               &cert_info);
  if (rc != TSS2_RC_SUCCESS) {
    failed = "Esys_ActivateCredential";
    goto out;
  }
  set_data(j, cert_info->buffer, cert_info->size);
out:
  Esys_Free(cert_info);
  if (session != NONE) {
    edgeid_count_command(base->ctx);
    TSS2_RC frc = Esys_FlushContext(esys, session);
    if (rc == TSS2_RC_SUCCESS && frc != TSS2_RC_SUCCESS) {
      rc = frc;
      failed = "Esys_FlushContext";
    }
  }
  if (rc != TSS2_RC_SUCCESS) {
    base->rc = rc;
    base->failed = failed;
  }
}

static napi_value data_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  return make_buffer(env, j->data, j->data_len);
}

static napi_value js_activate_credential(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  if (!args_get(env, info, 7, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], activate_exec, data_complete);
  if (j == NULL) return NULL;
  if (!arg_u32(env, argv[1], "ak", &j->args.activate.ak) || !arg_u32(env, argv[2], "ek", &j->args.activate.ek) ||
      !arg_TPM2B_ID_OBJECT(env, argv[3], "credentialBlob", j, &j->args.activate.credential_blob) ||
      !arg_TPM2B_ENCRYPTED_SECRET(env, argv[4], "encryptedSecret", j, &j->args.activate.encrypted_secret) ||
      !arg_u16(env, argv[5], "policyHashAlg", &j->args.activate.policy_hash))
    return fail_job(env, j);
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, argv[6], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[6], &n) != napi_ok || n > 8 || n == 1) {
    napi_throw_type_error(env, NULL, "orDigests must be an array of 0 or 2..8 digests");
    return fail_job(env, j);
  }
  TPML_DIGEST *or_digests = &j->args.activate.or_digests;
  or_digests->count = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value d;
    if (napi_get_element(env, argv[6], i, &d) != napi_ok ||
        !arg_bytes_into(env, d, "orDigests[i]", or_digests->digests[i].buffer, sizeof or_digests->digests[i].buffer,
                        &or_digests->digests[i].size))
      return fail_job(env, j);
  }
  return job_start(env, &j->base, "edgeid.tpm.activateCredential");
}

/* ---------- pcrRead(ctx, TPML_PCR_SELECTION) → {updateCounter, selection, digests[]} ---------- */

static void pcr_read_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPML_PCR_SELECTION *sel_out = NULL;
  TPML_DIGEST *values = NULL;
  TPM_COMMAND(base, "Esys_PCR_Read", Esys_PCR_Read(base->ctx->esys, NONE, NONE, NONE, &j->args.pcr_read.selection,
                                                   &j->update_counter, &sel_out, &values));
  MARSHAL_INTO(base, TPML_PCR_SELECTION, sel_out, j->selection, j->selection_len);
  j->digests = *values;
  Esys_Free(sel_out);
  Esys_Free(values);
}

static napi_value pcr_read_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env), arr;
  if (o == NULL || napi_create_array_with_length(env, j->digests.count, &arr) != napi_ok) return NULL;
  for (uint32_t i = 0; i < j->digests.count; i++) {
    napi_value b = make_buffer(env, j->digests.digests[i].buffer, j->digests.digests[i].size);
    if (b == NULL || napi_set_element(env, arr, i, b) != napi_ok) return NULL;
  }
  if (!set_prop(env, o, "updateCounter", make_u32(env, j->update_counter)) ||
      !set_prop(env, o, "selection", make_buffer(env, j->selection, j->selection_len)) ||
      !set_prop(env, o, "digests", arr))
    return NULL;
  return o;
}

static napi_value js_pcr_read(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args_get(env, info, 2, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], pcr_read_exec, pcr_read_complete);
  if (j == NULL) return NULL;
  if (!arg_TPML_PCR_SELECTION(env, argv[1], "selection", j, &j->args.pcr_read.selection)) return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.pcrRead");
}

/* ---------- pcrExtend(ctx, index, hashAlg, digest) ---------- */

static void pcr_extend_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPML_DIGEST_VALUES values = {.count = 1};
  values.digests[0].hashAlg = j->args.pcr_extend.hash;
  memcpy(&values.digests[0].digest, j->args.pcr_extend.digest.buffer, j->args.pcr_extend.digest.size);
  TPM_COMMAND(base, "Esys_PCR_Extend",
              Esys_PCR_Extend(base->ctx->esys, ESYS_TR_PCR0 + j->args.pcr_extend.index, PW, NONE, NONE, &values));
}

static napi_value js_pcr_extend(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args_get(env, info, 4, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], pcr_extend_exec, NULL);
  if (j == NULL) return NULL;
  TPM2B_DIGEST *digest = &j->args.pcr_extend.digest;
  if (!arg_u32(env, argv[1], "index", &j->args.pcr_extend.index) ||
      !arg_u16(env, argv[2], "hashAlg", &j->args.pcr_extend.hash) ||
      !arg_bytes_into(env, argv[3], "digest", digest->buffer, sizeof digest->buffer, &digest->size))
    return fail_job(env, j);
  if (j->args.pcr_extend.index > 31) {
    napi_throw_range_error(env, NULL, "PCR index out of range");
    return fail_job(env, j);
  }
  return job_start(env, &j->base, "edgeid.tpm.pcrExtend");
}

/* ---------- getRandom(ctx, n ≤ 64) → bytes (the TPM may return fewer) ---------- */

static void get_random_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_DIGEST *bytes = NULL;
  TPM_COMMAND(base, "Esys_GetRandom", Esys_GetRandom(base->ctx->esys, NONE, NONE, NONE, j->args.get_random.bytes, &bytes));
  set_data(j, bytes->buffer, bytes->size);
  Esys_Free(bytes);
}

static napi_value js_get_random(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args_get(env, info, 2, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], get_random_exec, data_complete);
  if (j == NULL) return NULL;
  uint32_t bytes;
  if (!arg_u32(env, argv[1], "bytes", &bytes)) return fail_job(env, j);
  if (bytes > sizeof(TPMU_HA)) {
    napi_throw_range_error(env, NULL, "getRandom returns at most 64 bytes per call");
    return fail_job(env, j);
  }
  j->args.get_random.bytes = (UINT16)bytes;
  return job_start(env, &j->base, "edgeid.tpm.getRandom");
}

/* ---------- getCapability(ctx, capability, property, count) → {more, values[]} ----------
 * TPM_CAP_TPM_PROPERTIES: values = [property, value, property, value, ...]
 * TPM_CAP_HANDLES:        values = [handle, ...]
 * TPM_CAP_PCRS:           values = [], selection = the active banks as TPML_PCR_SELECTION */

static void get_capability_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPMS_CAPABILITY_DATA *data = NULL;
  TPM_COMMAND(base, "Esys_GetCapability",
              Esys_GetCapability(base->ctx->esys, NONE, NONE, NONE, j->args.get_capability.capability,
                                 j->args.get_capability.property, j->args.get_capability.count, &j->more, &data));
  j->cap = *data;
  if (data->capability == TPM2_CAP_PCRS)
    MARSHAL_INTO(base, TPML_PCR_SELECTION, &data->data.assignedPCR, j->selection, j->selection_len);
  Esys_Free(data);
}

static napi_value get_capability_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env), arr, more;
  if (o == NULL || napi_create_array(env, &arr) != napi_ok || napi_get_boolean(env, j->more, &more) != napi_ok)
    return NULL;
  uint32_t n = 0;
  if (j->cap.capability == TPM2_CAP_TPM_PROPERTIES) {
    const TPML_TAGGED_TPM_PROPERTY *p = &j->cap.data.tpmProperties;
    for (uint32_t i = 0; i < p->count && i < TPM2_MAX_TPM_PROPERTIES; i++) {
      if (napi_set_element(env, arr, n++, make_u32(env, p->tpmProperty[i].property)) != napi_ok ||
          napi_set_element(env, arr, n++, make_u32(env, p->tpmProperty[i].value)) != napi_ok)
        return NULL;
    }
  } else if (j->cap.capability == TPM2_CAP_HANDLES) {
    const TPML_HANDLE *h = &j->cap.data.handles;
    for (uint32_t i = 0; i < h->count && i < TPM2_MAX_CAP_HANDLES; i++)
      if (napi_set_element(env, arr, n++, make_u32(env, h->handle[i])) != napi_ok) return NULL;
  }
  if (j->cap.capability == TPM2_CAP_PCRS &&
      !set_prop(env, o, "selection", make_buffer(env, j->selection, j->selection_len)))
    return NULL;
  if (!set_prop(env, o, "more", more) || !set_prop(env, o, "values", arr)) return NULL;
  return o;
}

static napi_value js_get_capability(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args_get(env, info, 4, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], get_capability_exec, get_capability_complete);
  if (j == NULL) return NULL;
  TPM2_CAP *capability = &j->args.get_capability.capability;
  if (!arg_u32(env, argv[1], "capability", capability) || !arg_u32(env, argv[2], "property", &j->args.get_capability.property) ||
      !arg_u32(env, argv[3], "count", &j->args.get_capability.count))
    return fail_job(env, j);
  if (*capability != TPM2_CAP_TPM_PROPERTIES && *capability != TPM2_CAP_HANDLES && *capability != TPM2_CAP_PCRS) {
    napi_throw_range_error(env, NULL, "only TPM_CAP_TPM_PROPERTIES, TPM_CAP_HANDLES and TPM_CAP_PCRS are supported");
    return fail_job(env, j);
  }
  return job_start(env, &j->base, "edgeid.tpm.getCapability");
}

/* ---------- nvReadPublic(ctx, nvTr) → {nvIndex, nameAlg, attributes, dataSize} ---------- */

static void nv_read_public_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_NV_PUBLIC *pub = NULL;
  TPM2B_NAME *name = NULL;
  TPM_COMMAND(base, "Esys_NV_ReadPublic", Esys_NV_ReadPublic(base->ctx->esys, j->args.object.handle, NONE, NONE, NONE, &pub, &name));
  j->nv = pub->nvPublic;
  Esys_Free(pub);
  Esys_Free(name);
}

static napi_value nv_read_public_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  napi_value o = new_object(env);
  if (o == NULL || !set_prop(env, o, "nvIndex", make_u32(env, j->nv.nvIndex)) ||
      !set_prop(env, o, "nameAlg", make_u32(env, j->nv.nameAlg)) ||
      !set_prop(env, o, "attributes", make_u32(env, j->nv.attributes)) ||
      !set_prop(env, o, "dataSize", make_u32(env, j->nv.dataSize)))
    return NULL;
  return o;
}

static napi_value js_nv_read_public(napi_env env, napi_callback_info info) {
  return one_handle_command(env, info, "nvIndex", nv_read_public_exec, nv_read_public_complete,
                         "edgeid.tpm.nvReadPublic");
}

/* ---------- nvRead(ctx, authTr, nvTr, size, offset) → bytes ---------- */

static void nv_read_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM2B_MAX_NV_BUFFER *data = NULL;
  TPM_COMMAND(base, "Esys_NV_Read",
              Esys_NV_Read(base->ctx->esys, j->args.nv_read.auth, j->args.nv_read.nv_index, PW, NONE, NONE,
                           j->args.nv_read.size, j->args.nv_read.offset, &data));
  set_data(j, data->buffer, data->size);
  Esys_Free(data);
}

static napi_value js_nv_read(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args_get(env, info, 5, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], nv_read_exec, data_complete);
  if (j == NULL) return NULL;
  uint32_t size, offset;
  if (!arg_u32(env, argv[1], "auth", &j->args.nv_read.auth) || !arg_u32(env, argv[2], "nvIndex", &j->args.nv_read.nv_index) ||
      !arg_u32(env, argv[3], "size", &size) || !arg_u32(env, argv[4], "offset", &offset))
    return fail_job(env, j);
  if (size > TPM2_MAX_NV_BUFFER_SIZE || offset > 0xffff) {
    napi_throw_range_error(env, NULL, "NV read size or offset out of range");
    return fail_job(env, j);
  }
  j->args.nv_read.size = (UINT16)size;
  j->args.nv_read.offset = (UINT16)offset;
  return job_start(env, &j->base, "edgeid.tpm.nvRead");
}

/* ---------- contextSave(ctx, tr) → ESYS context blob / contextLoad(ctx, blob) → tr ---------- */

static void context_save_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPMS_CONTEXT *saved = NULL;
  TPM_COMMAND(base, "Esys_ContextSave", Esys_ContextSave(base->ctx->esys, j->args.object.handle, &saved));
  MARSHAL_INTO(base, TPMS_CONTEXT, saved, j->context, j->context_len);
  Esys_Free(saved);
}

static napi_value context_complete(napi_env env, job *base) {
  cmd_job *j = (cmd_job *)base;
  return make_buffer(env, j->context, j->context_len);
}

static napi_value js_context_save(napi_env env, napi_callback_info info) {
  return one_handle_command(env, info, "handle", context_save_exec, context_complete, "edgeid.tpm.contextSave");
}

static void context_load_exec(job *base) {
  cmd_job *j = (cmd_job *)base;
  TPM_COMMAND(base, "Esys_ContextLoad", Esys_ContextLoad(base->ctx->esys, &j->args.context_load.saved, &j->handle));
}

static napi_value js_context_load(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args_get(env, info, 2, argv)) return NULL;
  cmd_job *j = cmd_new(env, argv[0], context_load_exec, handle_complete);
  if (j == NULL) return NULL;
  if (!arg_TPMS_CONTEXT(env, argv[1], "context", j, &j->args.context_load.saved)) return fail_job(env, j);
  return job_start(env, &j->base, "edgeid.tpm.contextLoad");
}

/* ---------- registration ---------- */

static void set_const(napi_env env, napi_value obj, const char *key, uint32_t v) {
  napi_value n;
  if (napi_create_uint32(env, v, &n) == napi_ok) napi_set_named_property(env, obj, key, n);
}

void edgeid_register_commands(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"createPrimary", NULL, js_create_primary, NULL, NULL, NULL, napi_default, NULL},
      {"create", NULL, js_create, NULL, NULL, NULL, napi_default, NULL},
      {"createLoaded", NULL, js_create_loaded, NULL, NULL, NULL, napi_default, NULL},
      {"load", NULL, js_load, NULL, NULL, NULL, napi_default, NULL},
      {"flush", NULL, js_flush, NULL, NULL, NULL, napi_default, NULL},
      {"trFromTpmPublic", NULL, js_tr_from_tpm_public, NULL, NULL, NULL, napi_default, NULL},
      {"trClose", NULL, js_tr_close, NULL, NULL, NULL, napi_default, NULL},
      {"readPublic", NULL, js_read_public, NULL, NULL, NULL, napi_default, NULL},
      {"sign", NULL, js_sign, NULL, NULL, NULL, napi_default, NULL},
      {"quote", NULL, js_quote, NULL, NULL, NULL, napi_default, NULL},
      {"certify", NULL, js_certify, NULL, NULL, NULL, napi_default, NULL},
      {"activateCredential", NULL, js_activate_credential, NULL, NULL, NULL, napi_default, NULL},
      {"pcrRead", NULL, js_pcr_read, NULL, NULL, NULL, napi_default, NULL},
      {"pcrExtend", NULL, js_pcr_extend, NULL, NULL, NULL, napi_default, NULL},
      {"getRandom", NULL, js_get_random, NULL, NULL, NULL, napi_default, NULL},
      {"getCapability", NULL, js_get_capability, NULL, NULL, NULL, napi_default, NULL},
      {"nvReadPublic", NULL, js_nv_read_public, NULL, NULL, NULL, napi_default, NULL},
      {"nvRead", NULL, js_nv_read, NULL, NULL, NULL, napi_default, NULL},
      {"contextSave", NULL, js_context_save, NULL, NULL, NULL, napi_default, NULL},
      {"contextLoad", NULL, js_context_load, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);

  napi_value tr;
  if (napi_create_object(env, &tr) != napi_ok) return;
  set_const(env, tr, "RH_OWNER", ESYS_TR_RH_OWNER);
  set_const(env, tr, "RH_ENDORSEMENT", ESYS_TR_RH_ENDORSEMENT);
  set_const(env, tr, "RH_PLATFORM", ESYS_TR_RH_PLATFORM);
  set_const(env, tr, "RH_NULL", ESYS_TR_RH_NULL);
  napi_set_named_property(env, exports, "ESYS_TR", tr);
}
