/*
 * Unsticking a TPM that does not answer.
 *
 * tpm2-tss gives no way to bound a command: ESYS's synchronous calls pass TSS2_TCTI_TIMEOUT_BLOCK
 * to the TCTI, and the swtpm TCTI of tpm2-tss 3.x ignores the timeout of receive() altogether
 * ("Asynchronous I/O not actually implemented") and reads with a blocking read() that retries on
 * EINTR; its getPollHandles is not implemented. So a TPM behind a socket that accepts a command and
 * never answers (or answers fewer bytes than its header announces) blocks the calling thread for
 * good — a libuv worker for the queue, the main thread for the TLS signing callback.
 *
 * edgeid_abort_io() ends such a wait from another thread: it marks the context broken and shuts down
 * (shutdown(2), not close) every socket of this process whose peer is the TPM's address (from the
 * TCTI configuration: swtpm and mssim, host/port or path). The blocked read() then returns 0 and
 * the TCTI reports TSS2_TCTI_RC_IO_ERROR; the descriptor stays the TCTI's to close. The ESYS context
 * is unusable after that (ESYS enters its internal-error state on any non-TPM error), so a broken
 * context only fails until the TS layer reconnects it (reconnect in addon.c: new TCTI and ESYS).
 * For the device TCTI there is no socket: the kernel's TPM driver bounds each command itself
 * (TPM 2.0 command durations of the TCG PC Client Platform TPM Profile), and abort only marks the
 * context broken.
 *
 * The watchdog thread does this for the TLS signing callback, which runs on the main thread: the
 * callback arms it with its deadline before its TPM commands and disarms it after.
 */
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "edgeid_tpm.h"

/* ---------- the TPM's address, from the TCTI configuration ---------- */

/* Copies the value of `key=` in a "k=v,k=v" option string into out; 0 if absent. */
static int conf_value(const char *opts, const char *key, char *out, size_t cap) {
  size_t klen = strlen(key);
  const char *p = opts;
  while (p && *p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      size_t vlen = len - klen - 1;
      if (vlen >= cap) return 0;
      memcpy(out, p + klen + 1, vlen);
      out[vlen] = '\0';
      return 1;
    }
    p = end ? end + 1 : NULL;
  }
  return 0;
}

void edgeid_resolve_peers(const char *conf, edgeid_tpm_peers *peers) {
  memset(peers, 0, sizeof *peers);
  const char *colon = strchr(conf, ':');
  size_t name_len = colon ? (size_t)(colon - conf) : strlen(conf);
  const char *opts = colon ? colon + 1 : "";
  char name[64];
  if (name_len >= sizeof name) return;
  memcpy(name, conf, name_len);
  name[name_len] = '\0';
  /* tss2_tctildr names: "swtpm", "mssim" or the library's file name. */
  if (strstr(name, "swtpm") == NULL && strstr(name, "mssim") == NULL) return;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  if (strstr(name, "swtpm") != NULL && conf_value(opts, "path", path, sizeof path)) {
    struct sockaddr_un *un = (struct sockaddr_un *)&peers->addr[0];
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, strlen(path) + 1);
    peers->len[0] = sizeof *un;
    peers->count = 1;
    return;
  }
  char host[256] = "localhost", port[16] = "2321"; /* the defaults of both TCTIs */
  conf_value(opts, "host", host, sizeof host);
  conf_value(opts, "port", port, sizeof port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res = NULL;
  if (getaddrinfo(host, port, &hints, &res) != 0) return;
  for (struct addrinfo *ai = res; ai && peers->count < EDGEID_MAX_PEERS; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof peers->addr[0]) continue;
    memcpy(&peers->addr[peers->count], ai->ai_addr, ai->ai_addrlen);
    peers->len[peers->count] = ai->ai_addrlen;
    peers->count++;
  }
  freeaddrinfo(res);
}

static int same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  if (a->ss_family == AF_UNIX) {
    const struct sockaddr_un *x = (const void *)a, *y = (const void *)b;
    return strncmp(x->sun_path, y->sun_path, sizeof x->sun_path) == 0;
  }
  return 0;
}

int edgeid_abort_io(edgeid_ctx *ctx) {
  __atomic_store_n(&ctx->broken, 1, __ATOMIC_RELEASE);
  if (ctx->peers.count == 0) return 0;
  DIR *dir = opendir("/proc/self/fd");
  if (dir == NULL) return 0;
  int shut = 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    char *end;
    long fd = strtol(e->d_name, &end, 10);
    if (*end != '\0' || fd < 0 || fd == dirfd(dir)) continue;
    struct stat st;
    if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    memset(&peer, 0, sizeof peer);
    if (getpeername((int)fd, (struct sockaddr *)&peer, &len) != 0) continue;
    for (int i = 0; i < ctx->peers.count; i++) {
      if (same_peer(&peer, &ctx->peers.addr[i])) {
        if (shutdown((int)fd, SHUT_RDWR) == 0) shut++;
        break;
      }
    }
  }
  closedir(dir);
  return shut;
}

/* ---------- the watchdog thread (armed by the TLS signing callback, main thread) ---------- */

static pthread_once_t wd_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t wd_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static int wd_running;
static edgeid_ctx *wd_ctx;        /* armed for this context, NULL when disarmed */
static struct timespec wd_deadline; /* CLOCK_MONOTONIC */
static uint64_t wd_generation;    /* bumped by every arm/disarm */

static void *wd_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&wd_mutex);
  for (;;) {
    while (wd_ctx == NULL) pthread_cond_wait(&wd_cond, &wd_mutex);
    uint64_t gen = wd_generation;
    int rc = 0;
    while (wd_ctx != NULL && wd_generation == gen && rc != ETIMEDOUT)
      rc = pthread_cond_timedwait(&wd_cond, &wd_mutex, &wd_deadline);
    if (rc == ETIMEDOUT && wd_ctx != NULL && wd_generation == gen) {
      /* Under wd_mutex: disarm (the callback's next step) waits for this, so ctx stays alive. */
      edgeid_abort_io(wd_ctx);
      while (wd_ctx != NULL && wd_generation == gen) pthread_cond_wait(&wd_cond, &wd_mutex);
    }
  }
  return NULL;
}

static void wd_start(void) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&wd_cond, &attr);
  pthread_condattr_destroy(&attr);
  pthread_t thread;
  pthread_attr_t tattr;
  pthread_attr_init(&tattr);
  pthread_attr_setdetachstate(&tattr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&tattr, 64 * 1024);
  wd_running = pthread_create(&thread, &tattr, wd_main, NULL) == 0;
  pthread_attr_destroy(&tattr);
}

int edgeid_watchdog_arm(edgeid_ctx *ctx, const struct timespec *deadline) {
  pthread_once(&wd_once, wd_start);
  if (!wd_running) return 0;
  pthread_mutex_lock(&wd_mutex);
  wd_ctx = ctx;
  wd_deadline = *deadline;
  wd_generation++;
  pthread_cond_broadcast(&wd_cond);
  pthread_mutex_unlock(&wd_mutex);
  return 1;
}

void edgeid_watchdog_disarm(void) {
  if (!wd_running) return;
  pthread_mutex_lock(&wd_mutex);
  wd_ctx = NULL;
  wd_generation++;
  pthread_cond_broadcast(&wd_cond);
  pthread_mutex_unlock(&wd_mutex);
}
