/*
 * TLS client keys that stay in the TPM.
 *
 * Node gives addons no API to put a hardware key into a tls.SecureContext, so this file reaches
 * behind one: `secureContext.context._external` is a V8 External holding the SSL_CTX* (a Node
 * internal; the TS layer and a test guard it). Into that SSL_CTX goes an EVP_PKEY built from an
 * EC_KEY that holds only the TPM key's public point and whose EC_KEY_METHOD signs with Esys_Sign.
 * OpenSSL 3.0 treats such a "foreign" key on its legacy path and calls sign/sign_sig once per full
 * handshake, synchronously on the main thread.
 *
 * Per signature: ContextLoad (saved context) → Sign → FlushContext, so the key occupies no
 * transient slot between handshakes. If the saved context no longer loads (TPM reset/cleared,
 * context invalid), the key is rebuilt from its blobs: Load under the SRK the TS layer keeps
 * resident (tlsSetParent), else CreatePrimary(SRK) → Load → Flush(SRK); then ContextSave → Sign →
 * Flush. A TPM that is out of memory (or unreachable) fails the signature, and
 * with it the handshake; mqtt.js reconnects later. Nothing here may crash the process.
 *
 * The callback blocks the event loop, so it is bounded: waiting for the lock (a queued command may
 * be running) and its TPM commands end by one deadline (setTlsDeadline, default 5 s). Past it the
 * watchdog (watchdog.c) shuts down the TPM socket, the blocked read returns and the signature fails;
 * the context is then broken until the TS layer reconnects it.
 *
 * Built against Node's own OpenSSL headers (node-gyp --nodedir=/usr) and linked to no libcrypto:
 * the symbols resolve to the OpenSSL inside the node binary.
 */
#include <node_api.h>
#include <v8.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>

#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include "edgeid_tpm.h"

namespace {

/* One TPM-resident TLS key. Owned by reference: the EC_KEY's ex_data holds one (dropped when
 * OpenSSL frees the key, i.e. when the last SSL_CTX/SSL using it goes), the JS handle another. */
struct TlsKey {
  TlsKey() { __atomic_add_fetch(&edgeid_live_tls_keys, 1, __ATOMIC_RELAXED); }
  ~TlsKey() { __atomic_sub_fetch(&edgeid_live_tls_keys, 1, __ATOMIC_RELAXED); }
  std::atomic<int> refs{1};
  edgeid_ctx *ctx = nullptr; /* referenced */
  /* Below: read and written only with ctx->lock held. */
  bool released = false;
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
  TPM2B_PUBLIC srk_template{};
  bool have_saved = false;
  TPMS_CONTEXT saved{};
};

void key_ref(TlsKey *k) { k->refs.fetch_add(1, std::memory_order_acq_rel); }

void key_unref(TlsKey *k) {
  if (k->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  edgeid_ctx *ctx = k->ctx;
  OPENSSL_cleanse(&k->priv, sizeof k->priv);
  OPENSSL_cleanse(&k->saved, sizeof k->saved);
  delete k;
  if (ctx) edgeid_ctx_unref(ctx);
}

int g_ex_index = -1;
EC_KEY_METHOD *g_method = nullptr;

/* ---------- the TPM side of one signature (ctx->lock held) ---------- */

struct SignFailure {
  TSS2_RC rc = TSS2_RC_SUCCESS;
  const char *what = nullptr;
};

#define TLS_CMD(kind, call) (k->ctx->tls.commands[(kind)]++, (call))

/* TPM warnings (object/session memory, retry, …) and TCTI failures are not about the saved
 * context: rebuilding the key would fail the same way, so they fail the signature at once. */
bool worth_rebuilding(TSS2_RC rc) {
  uint32_t layer = (rc >> 16) & 0xff;
  if (layer == 0) {
    bool format_one = (rc & 0x80) != 0;
    bool warning = !format_one && (rc & 0x900) == 0x900;
    return !warning;
  }
  return layer == 7; /* ESYS: e.g. its metadata in the saved blob does not fit */
}

/* The TPM has no room (memory warnings) or cannot be reached (TCTI): no other route will work now.
 * A stale resident handle (TPM_RC_REFERENCE_H0, _HANDLE …) is not that: the SRK is recreated. */
bool out_of_room(TSS2_RC rc) {
  uint32_t layer = (rc >> 16) & 0xff;
  if (layer == 10) return true; /* TCTI */
  uint32_t base = rc & 0xfff;
  return layer == 0 && (base == 0x901 || base == 0x902 || base == 0x903);
}

/* ContextSave of the freshly loaded key, so the next handshakes need only ContextLoad. */
void save_context(TlsKey *k, ESYS_TR obj, SignFailure *f) {
  TPMS_CONTEXT *saved = nullptr;
  TSS2_RC rc = TLS_CMD(EDGEID_TLS_CONTEXT_SAVE, Esys_ContextSave(k->ctx->esys, obj, &saved));
  if (rc == TSS2_RC_SUCCESS) {
    k->saved = *saved;
    k->have_saved = true;
  } else {
    *f = {rc, "Esys_ContextSave"}; /* next handshake rebuilds again */
  }
  Esys_Free(saved);
}

/* Load(blobs) under the SRK the TS layer keeps resident (one object slot); false if there is none
 * or it does not take the blob (stale handle after a TPM reset, …): then the caller recreates it. */
bool load_under_resident_srk(TlsKey *k, ESYS_TR *obj, SignFailure *f) {
  ESYS_TR parent = k->ctx->tls_parent;
  if (parent == ESYS_TR_NONE) return false;
  TSS2_RC rc = TLS_CMD(EDGEID_TLS_LOAD, Esys_Load(k->ctx->esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                                  ESYS_TR_NONE, &k->priv, &k->pub, obj));
  if (rc != TSS2_RC_SUCCESS) {
    *obj = ESYS_TR_NONE;
    *f = {rc, "Esys_Load (resident SRK)"};
    return false;
  }
  save_context(k, *obj, f);
  return true;
}

/* CreatePrimary(SRK) → Load(blobs) → Flush(SRK) → ContextSave; leaves the key loaded in *obj. */
bool load_from_blobs(TlsKey *k, ESYS_TR *obj, SignFailure *f) {
  if (load_under_resident_srk(k, obj, f)) return true;
  if (f->what != nullptr && out_of_room(f->rc)) return false; /* CreatePrimary would fail the same way */
  ESYS_CONTEXT *esys = k->ctx->esys;
  static const TPM2B_SENSITIVE_CREATE no_sensitive{};
  static const TPM2B_DATA no_outside_info{};
  static const TPML_PCR_SELECTION no_pcrs{};
  ESYS_TR srk = ESYS_TR_NONE;
  TPM2B_PUBLIC *out_pub = nullptr;
  TPM2B_CREATION_DATA *cdata = nullptr;
  TPM2B_DIGEST *chash = nullptr;
  TPMT_TK_CREATION *ticket = nullptr;
  TSS2_RC rc = TLS_CMD(EDGEID_TLS_CREATE_PRIMARY,
                       Esys_CreatePrimary(esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                          &no_sensitive, &k->srk_template, &no_outside_info, &no_pcrs, &srk,
                                          &out_pub, &cdata, &chash, &ticket));
  Esys_Free(out_pub);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
  if (rc != TSS2_RC_SUCCESS) {
    *f = {rc, "Esys_CreatePrimary"};
    return false;
  }
  rc = TLS_CMD(EDGEID_TLS_LOAD, Esys_Load(esys, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &k->priv,
                                          &k->pub, obj));
  TSS2_RC frc = TLS_CMD(EDGEID_TLS_FLUSH_CONTEXT, Esys_FlushContext(esys, srk));
  if (rc != TSS2_RC_SUCCESS) {
    *obj = ESYS_TR_NONE;
    *f = {rc, "Esys_Load"};
    return false;
  }
  if (frc != TSS2_RC_SUCCESS) *f = {frc, "Esys_FlushContext (SRK)"}; /* recorded; the key is usable */
  save_context(k, *obj, f);
  return true;
}

/* Signs `digest` in the TPM; returns an ECDSA_SIG or nullptr (reason in *f). ctx->lock held. */
ECDSA_SIG *tpm_sign(TlsKey *k, const unsigned char *digest, int len, SignFailure *f) {
  TPMI_ALG_HASH hash;
  switch (len) {
    case 32: hash = TPM2_ALG_SHA256; break;
    case 48: hash = TPM2_ALG_SHA384; break;
    case 64: hash = TPM2_ALG_SHA512; break;
    default:
      *f = {0, "digest is not SHA-256/384/512"};
      return nullptr;
  }
  edgeid_ctx *ctx = k->ctx;
  if (ctx->closed) {
    *f = {0, "the TPM connection is closed"};
    return nullptr;
  }
  if (edgeid_is_broken(ctx) || ctx->esys == nullptr) {
    *f = {0, "the TPM connection is broken (a command got no answer in time); the agent reconnects it"};
    return nullptr;
  }
  if (k->released) {
    *f = {0, "the TLS key was released"};
    return nullptr;
  }
  ESYS_CONTEXT *esys = ctx->esys;
  ESYS_TR obj = ESYS_TR_NONE;
  if (k->have_saved) {
    TSS2_RC rc = TLS_CMD(EDGEID_TLS_CONTEXT_LOAD, Esys_ContextLoad(esys, &k->saved, &obj));
    if (rc != TSS2_RC_SUCCESS) {
      obj = ESYS_TR_NONE;
      if (!worth_rebuilding(rc)) {
        *f = {rc, "Esys_ContextLoad"};
        return nullptr;
      }
      k->have_saved = false; /* stale: rebuild from the blobs */
    }
  }
  if (obj == ESYS_TR_NONE && !load_from_blobs(k, &obj, f)) return nullptr;

  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_ECDSA;
  scheme.details.ecdsa.hashAlg = hash;
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  TPM2B_DIGEST tpm_digest{};
  tpm_digest.size = static_cast<UINT16>(len);
  memcpy(tpm_digest.buffer, digest, static_cast<size_t>(len));
  TPMT_SIGNATURE *sig = nullptr;
  TSS2_RC rc = TLS_CMD(EDGEID_TLS_SIGN, Esys_Sign(esys, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                                  &tpm_digest, &scheme, &validation, &sig));
  TSS2_RC frc = TLS_CMD(EDGEID_TLS_FLUSH_CONTEXT, Esys_FlushContext(esys, obj));
  if (rc != TSS2_RC_SUCCESS) {
    *f = {rc, "Esys_Sign"};
    Esys_Free(sig);
    return nullptr;
  }
  if (frc != TSS2_RC_SUCCESS) *f = {frc, "Esys_FlushContext"};

  ECDSA_SIG *out = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig->signature.ecdsa.signatureR.buffer, sig->signature.ecdsa.signatureR.size, nullptr);
  BIGNUM *s = BN_bin2bn(sig->signature.ecdsa.signatureS.buffer, sig->signature.ecdsa.signatureS.size, nullptr);
  bool ok = sig->sigAlg == TPM2_ALG_ECDSA && out && r && s && ECDSA_SIG_set0(out, r, s) == 1;
  Esys_Free(sig);
  if (!ok) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(out);
    *f = {0, "the TPM returned an unusable ECDSA signature"};
    return nullptr;
  }
  return out;
}

uint64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

/* ---------- EC_KEY_METHOD callbacks (main thread, inside SSL_do_handshake) ---------- */

ECDSA_SIG *method_sign_sig(const unsigned char *dgst, int dgst_len, const BIGNUM *, const BIGNUM *, EC_KEY *eckey) {
  TlsKey *k = static_cast<TlsKey *>(EC_KEY_get_ex_data(eckey, g_ex_index));
  if (k == nullptr) {
    ERR_raise_data(ERR_LIB_EC, ERR_R_PASSED_NULL_PARAMETER, "edgeid: EC key without its TPM key");
    return nullptr;
  }
  uint64_t t0 = now_ns();
  edgeid_ctx *ctx = k->ctx;
  /* This runs on the main thread inside a handshake: everything below, waiting for the lock
   * included, ends by one deadline, so a TPM that stops answering fails the handshake instead of
   * freezing the event loop. */
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += ctx->tls_deadline_ms / 1000;
  deadline.tv_nsec += static_cast<long>(ctx->tls_deadline_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  SignFailure f;
  ECDSA_SIG *sig = nullptr;
  if (edgeid_is_broken(ctx)) {
    /* Checked before the lock: the command that broke it may still hold the lock, blocked. */
    f = {0, "the TPM connection is broken (a command got no answer in time); the agent reconnects it"};
  } else if (pthread_mutex_clocklock(&ctx->lock, CLOCK_MONOTONIC, &deadline) != 0) {
    /* A queued TPM command runs on a worker thread (one command, not a batch) and took too long. */
    f = {0, "the TPM stayed busy with another command past the TLS signing deadline"};
  } else {
    bool was_broken = edgeid_is_broken(ctx) != 0;
    /* If the TPM does not answer by the deadline, the watchdog ends the blocked read (watchdog.c). */
    bool armed = edgeid_watchdog_arm(ctx, &deadline) != 0;
    sig = tpm_sign(k, dgst, dgst_len, &f);
    if (armed) edgeid_watchdog_disarm();
    if (!sig && !was_broken && edgeid_is_broken(ctx)) {
      f.what = "the TPM did not answer within the TLS signing deadline";
    }
    pthread_mutex_unlock(&ctx->lock);
  }
  /* The statistics are written and read on the main thread only. */
  if (sig) {
    ctx->tls.signatures++;
  } else {
    ctx->tls.failures++;
  }
  if (f.what) {
    ctx->tls.last_rc = f.rc;
    ctx->tls.last_failed = f.what;
  }
  ctx->tls.last_sign_ns = now_ns() - t0;
  if (!sig) {
    ERR_raise_data(ERR_LIB_EC, ERR_R_OPERATION_FAIL, "edgeid: TPM signature failed: %s (rc 0x%x)", f.what, f.rc);
  }
  return sig;
}

int method_sign(int, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen, const BIGNUM *kinv,
                const BIGNUM *r, EC_KEY *eckey) {
  ECDSA_SIG *s = method_sign_sig(dgst, dlen, kinv, r, eckey);
  if (s == nullptr) {
    *siglen = 0;
    return 0;
  }
  int n = i2d_ECDSA_SIG(s, &sig);
  ECDSA_SIG_free(s);
  if (n < 0) {
    *siglen = 0;
    return 0;
  }
  *siglen = static_cast<unsigned int>(n);
  return 1;
}

/* ex_data callbacks: the EC_KEY's reference follows copies (EC_KEY_dup) and goes with the key. */
void ex_free(void *, void *ptr, CRYPTO_EX_DATA *, int, long, void *) {
  if (ptr) key_unref(static_cast<TlsKey *>(ptr));
}

int ex_dup(CRYPTO_EX_DATA *, const CRYPTO_EX_DATA *, void **from_d, int, long, void *) {
  if (from_d && *from_d) key_ref(static_cast<TlsKey *>(*from_d));
  return 1;
}

bool init_openssl_objects() {
  if (g_method) return true;
  g_ex_index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_EC_KEY, 0, nullptr, nullptr, ex_dup, ex_free);
  if (g_ex_index < 0) return false;
  EC_KEY_METHOD *m = EC_KEY_METHOD_new(EC_KEY_get_default_method());
  if (m == nullptr) return false;
  int (*def_sign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *, const BIGNUM *,
                  EC_KEY *) = nullptr;
  int (*def_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = nullptr;
  ECDSA_SIG *(*def_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *, EC_KEY *) = nullptr;
  EC_KEY_METHOD_get_sign(m, &def_sign, &def_setup, &def_sig);
  EC_KEY_METHOD_set_sign(m, method_sign, def_setup, method_sign_sig);
  g_method = m;
  return true;
}

/* ---------- N-API helpers ---------- */

napi_value throw_coded(napi_env env, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
napi_value throw_coded(napi_env env, const char *code, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_error(env, code, msg);
  return nullptr;
}

/* The oldest OpenSSL error on the queue as text, and the queue cleared. */
void take_openssl_error(char *out, size_t cap) {
  unsigned long e = ERR_peek_error();
  if (e == 0) {
    snprintf(out, cap, "no OpenSSL error recorded");
  } else {
    ERR_error_string_n(e, out, cap);
  }
  ERR_clear_error();
}

bool get_bytes(napi_env env, napi_value v, const char *what, const uint8_t **data, size_t *len) {
  bool is_typed = false;
  napi_typedarray_type type;
  void *ptr = nullptr;
  if (napi_is_typedarray(env, v, &is_typed) != napi_ok || !is_typed ||
      napi_get_typedarray_info(env, v, &type, len, &ptr, nullptr, nullptr) != napi_ok || type != napi_uint8_array) {
    throw_coded(env, "tpm_bad_argument", "%s must be a Buffer", what);
    return false;
  }
  *data = static_cast<const uint8_t *>(ptr);
  return true;
}

template <typename T>
bool unmarshal_all(napi_env env, napi_value v, const char *what,
                   TSS2_RC (*fn)(uint8_t const[], size_t, size_t *, T *), T *out) {
  const uint8_t *data;
  size_t len, off = 0;
  if (!get_bytes(env, v, what, &data, &len)) return false;
  TSS2_RC rc = fn(data, len, &off, out);
  if (rc != TSS2_RC_SUCCESS || off != len) {
    throw_coded(env, "tpm_bad_argument", "%s is not a well-formed TPM structure", what);
    return false;
  }
  return true;
}

/* napi_value is a v8::Local<v8::Value> underneath (as in Node's own js_native_api_v8.h). */
v8::Local<v8::Value> to_v8(napi_value v) {
  v8::Local<v8::Value> local;
  static_assert(sizeof local == sizeof v, "napi_value and v8::Local differ in size");
  memcpy(static_cast<void *>(&local), &v, sizeof v);
  return local;
}

bool openssl_compatible() {
  return OPENSSL_version_major() == OPENSSL_VERSION_MAJOR && OPENSSL_version_minor() == OPENSSL_VERSION_MINOR;
}

int nid_for_curve(TPMI_ECC_CURVE curve) {
  switch (curve) {
    case TPM2_ECC_NIST_P256: return NID_X9_62_prime256v1;
    case TPM2_ECC_NIST_P384: return NID_secp384r1;
    default: return NID_undef;
  }
}

/* An EVP_PKEY with the TPM key's public point whose signatures come from the TPM; takes a reference
 * on k. Returns nullptr with a JS exception pending. */
EVP_PKEY *make_tpm_pkey(napi_env env, TlsKey *k) {
  const TPMT_PUBLIC &pa = k->pub.publicArea;
  int nid = nid_for_curve(pa.parameters.eccDetail.curveID);
  if (pa.type != TPM2_ALG_ECC || nid == NID_undef) {
    throw_coded(env, "tpm_bad_argument", "the TLS key must be an ECC P-256 or P-384 key");
    return nullptr;
  }
  if ((pa.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) == 0 || (pa.objectAttributes & TPMA_OBJECT_RESTRICTED) != 0) {
    throw_coded(env, "tpm_bad_argument", "the TLS key must be an unrestricted signing key (createSigningKey)");
    return nullptr;
  }
  EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
  BIGNUM *x = BN_bin2bn(pa.unique.ecc.x.buffer, pa.unique.ecc.x.size, nullptr);
  BIGNUM *y = BN_bin2bn(pa.unique.ecc.y.buffer, pa.unique.ecc.y.size, nullptr);
  EVP_PKEY *pkey = nullptr;
  char err[256] = "";
  /* The method goes on before the key enters an EVP_PKEY: that is what makes OpenSSL see it as foreign. */
  bool ok = ec && x && y && EC_KEY_set_public_key_affine_coordinates(ec, x, y) == 1 && EC_KEY_set_method(ec, g_method) == 1;
  if (ok) {
    key_ref(k);
    if (EC_KEY_set_ex_data(ec, g_ex_index, k) != 1) {
      key_unref(k);
      ok = false;
    }
  }
  if (ok) {
    pkey = EVP_PKEY_new();
    ok = pkey && EVP_PKEY_assign_EC_KEY(pkey, ec) == 1;
    if (ok) ec = nullptr; /* owned by pkey */
  }
  if (!ok) take_openssl_error(err, sizeof err);
  BN_free(x);
  BN_free(y);
  EC_KEY_free(ec);
  if (!ok) {
    EVP_PKEY_free(pkey);
    throw_coded(env, "tpm_tls_key_rejected", "could not build the OpenSSL key for the TPM key: %s", err);
    return nullptr;
  }
  return pkey;
}

/* ---------- JS functions ---------- */

void key_handle_finalize(napi_env, void *data, void *) { key_unref(static_cast<TlsKey *>(data)); }

/* tlsInstallKey(ctx, sslCtxExternal, public, private, srkTemplate, savedContext) → key handle.
 * savedContext: marshaled TPMS_CONTEXT (ESYS form) of the loaded key, or null (built on first use). */
napi_value js_tls_install_key(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 6) return throw_coded(env, "tpm_bad_argument", "tlsInstallKey: missing arguments");
  if (!openssl_compatible()) {
    return throw_coded(env, "tpm_tls_openssl_mismatch",
                       "the TPM addon was built against %s but Node runs %s: rebuild the addon for this Node",
                       OPENSSL_VERSION_TEXT, OpenSSL_version(OPENSSL_VERSION));
  }
  if (!init_openssl_objects()) return throw_coded(env, "tpm_tls_key_rejected", "could not set up the OpenSSL key method");
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == nullptr) return nullptr;

  napi_valuetype type;
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_external || !to_v8(argv[1])->IsExternal()) {
    return throw_coded(env, "tpm_tls_node_internals_changed",
                       "tls.SecureContext.context._external is not a V8 External in this Node version");
  }
  SSL_CTX *ssl_ctx = static_cast<SSL_CTX *>(to_v8(argv[1]).As<v8::External>()->Value());
  if (ssl_ctx == nullptr) {
    return throw_coded(env, "tpm_tls_node_internals_changed", "tls.SecureContext.context._external holds no SSL_CTX");
  }

  TlsKey *k = new (std::nothrow) TlsKey();
  if (k == nullptr) return throw_coded(env, "tpm_tls_key_rejected", "out of memory");
  napi_value handle = nullptr;
  X509 *cert = nullptr;
  EVP_PKEY *pkey = nullptr;
  napi_valuetype saved_type;
  char err[256] = "";
  if (!unmarshal_all(env, argv[2], "public", Tss2_MU_TPM2B_PUBLIC_Unmarshal, &k->pub) ||
      !unmarshal_all(env, argv[3], "private", Tss2_MU_TPM2B_PRIVATE_Unmarshal, &k->priv) ||
      !unmarshal_all(env, argv[4], "srkTemplate", Tss2_MU_TPM2B_PUBLIC_Unmarshal, &k->srk_template) ||
      napi_typeof(env, argv[5], &saved_type) != napi_ok)
    goto fail;
  if (saved_type != napi_null && saved_type != napi_undefined) {
    if (!unmarshal_all(env, argv[5], "savedContext", Tss2_MU_TPMS_CONTEXT_Unmarshal, &k->saved)) goto fail;
    k->have_saved = true;
  }
  k->ctx = ctx;
  edgeid_ctx_ref(ctx);

  pkey = make_tpm_pkey(env, k);
  if (pkey == nullptr) goto fail;
  /* Cheap checks with clear messages before OpenSSL's own: a certificate is set, it is for this key,
   * and the context holds no key yet (the private key must never have been in Node's memory). */
  cert = SSL_CTX_get0_certificate(ssl_ctx);
  if (cert == nullptr) {
    throw_coded(env, "tpm_tls_key_rejected", "the SecureContext has no certificate (pass certPem)");
    goto fail;
  }
  if (EVP_PKEY_eq(X509_get0_pubkey(cert), pkey) != 1) {
    ERR_clear_error();
    throw_coded(env, "tpm_tls_key_mismatch", "the certificate's public key is not the TPM key's");
    goto fail;
  }
  if (SSL_CTX_get0_privatekey(ssl_ctx) != nullptr) {
    throw_coded(env, "tpm_tls_key_rejected", "the SecureContext already holds a private key");
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey(ssl_ctx, pkey) != 1 || SSL_CTX_check_private_key(ssl_ctx) != 1) {
    take_openssl_error(err, sizeof err);
    throw_coded(env, "tpm_tls_key_rejected", "OpenSSL refused the TPM key: %s", err);
    goto fail;
  }
  EVP_PKEY_free(pkey); /* the SSL_CTX holds its own reference */
  pkey = nullptr;
  if (napi_create_external(env, k, key_handle_finalize, nullptr, &handle) != napi_ok) {
    /* The key is installed and owned by the SSL_CTX; only the JS handle is missing. */
    key_unref(k);
    return nullptr;
  }
  return handle;
fail:
  EVP_PKEY_free(pkey); /* drops the EC_KEY's reference on k, if it took one */
  key_unref(k);        /* and ours (which unrefs ctx if it was referenced) */
  return nullptr;
}

/* tlsReleaseKey(keyHandle): forgets the key's blobs and saved context; later handshakes fail. */
napi_value js_tls_release_key(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype type;
  void *data = nullptr;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_external ||
      napi_get_value_external(env, argv[0], &data) != napi_ok || data == nullptr)
    return throw_coded(env, "tpm_bad_argument", "tlsReleaseKey: expected a TLS key handle");
  TlsKey *k = static_cast<TlsKey *>(data);
  pthread_mutex_lock(&k->ctx->lock);
  k->released = true;
  k->have_saved = false;
  OPENSSL_cleanse(&k->saved, sizeof k->saved);
  OPENSSL_cleanse(&k->priv, sizeof k->priv);
  pthread_mutex_unlock(&k->ctx->lock);
  return nullptr;
}

bool set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  return napi_create_double(env, v, &n) == napi_ok && napi_set_named_property(env, obj, key, n) == napi_ok;
}

bool set_str(napi_env env, napi_value obj, const char *key, const char *v) {
  napi_value s;
  return napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &s) == napi_ok &&
         napi_set_named_property(env, obj, key, s) == napi_ok;
}

/* tlsStats(ctx) → { signatures, failures, lastSignMicros, commands: {ContextLoad, …}, lastError } */
napi_value js_tls_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 1) return throw_coded(env, "tpm_bad_argument", "tlsStats: missing context");
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == nullptr) return nullptr;
  /* Written only by the sign callback, which runs on this (the main) thread: no lock needed, and
   * none taken, so reading stats never waits for a TPM command. */
  edgeid_tls_stats s = ctx->tls;
  static const char *const names[EDGEID_TLS_COMMAND_KINDS] = {"ContextLoad", "CreatePrimary", "Load",
                                                              "ContextSave", "Sign",          "FlushContext"};
  napi_value out, commands, last = nullptr;
  if (napi_create_object(env, &out) != napi_ok || napi_create_object(env, &commands) != napi_ok) return nullptr;
  for (int i = 0; i < EDGEID_TLS_COMMAND_KINDS; i++)
    if (!set_num(env, commands, names[i], static_cast<double>(s.commands[i]))) return nullptr;
  if (s.last_failed) {
    if (napi_create_object(env, &last) != napi_ok || !set_str(env, last, "command", s.last_failed) ||
        !set_num(env, last, "rc", s.last_rc) || !set_str(env, last, "text", s.last_rc ? Tss2_RC_Decode(s.last_rc) : ""))
      return nullptr;
  } else if (napi_get_null(env, &last) != napi_ok) {
    return nullptr;
  }
  if (!set_num(env, out, "signatures", static_cast<double>(s.signatures)) ||
      !set_num(env, out, "failures", static_cast<double>(s.failures)) ||
      !set_num(env, out, "lastSignMicros", static_cast<double>(s.last_sign_ns) / 1000.0) ||
      napi_set_named_property(env, out, "commands", commands) != napi_ok ||
      napi_set_named_property(env, out, "lastError", last) != napi_ok)
    return nullptr;
  return out;
}

/* tlsSetParent(ctx, esysTr | null): the resident SRK a stale TLS key may be reloaded under. The TS
 * layer clears it before it flushes that SRK (both on the main thread, like the sign callback). */
napi_value js_tls_set_parent(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok) return nullptr;
  if (argc < 2) return throw_coded(env, "tpm_bad_argument", "tlsSetParent: missing arguments");
  edgeid_ctx *ctx = edgeid_ctx_from_value(env, argv[0]);
  if (ctx == nullptr) return nullptr;
  napi_valuetype type;
  uint32_t tr = ESYS_TR_NONE;
  if (napi_typeof(env, argv[1], &type) != napi_ok) return nullptr;
  if (type != napi_null && type != napi_undefined &&
      (type != napi_number || napi_get_value_uint32(env, argv[1], &tr) != napi_ok))
    return throw_coded(env, "tpm_bad_argument", "tlsSetParent: expected an ESYS_TR handle or null");
  ctx->tls_parent = tr;
  return nullptr;
}

/* tlsOpenssl() → { headers, runtime, compatible }: the OpenSSL this addon was built for vs Node's. */
napi_value js_tls_openssl(napi_env env, napi_callback_info) {
  napi_value out, b;
  if (napi_create_object(env, &out) != napi_ok || !set_str(env, out, "headers", OPENSSL_VERSION_TEXT) ||
      !set_str(env, out, "runtime", OpenSSL_version(OPENSSL_VERSION)) ||
      napi_get_boolean(env, openssl_compatible(), &b) != napi_ok ||
      napi_set_named_property(env, out, "compatible", b) != napi_ok)
    return nullptr;
  return out;
}

}  // namespace

extern "C" void edgeid_register_tls(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"tlsInstallKey", nullptr, js_tls_install_key, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"tlsReleaseKey", nullptr, js_tls_release_key, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"tlsStats", nullptr, js_tls_stats, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"tlsSetParent", nullptr, js_tls_set_parent, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"tlsOpenssl", nullptr, js_tls_openssl, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
