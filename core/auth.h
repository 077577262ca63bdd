/* auth.h: authentication primitives shared by region and edge.
 *
 * Pure building blocks for the signup/login/refresh/logout endpoints and for
 * edges: key files, Ed25519 access tokens that verify without a database,
 * opaque refresh tokens of which only a hash is stored, keyed hashes of emails
 * and slugs, and argon2id password hashing on the libuv thread pool at bounded
 * concurrency.
 *
 * Access token: "mrd1." base64url(payload) "." base64url(signature), no
 * padding. The Ed25519 signature covers the ASCII bytes "mrd1." +
 * base64url(payload). The payload is compact JSON
 *   {"sub":"u1","hr":"us-east","roles":["operator"],"iat":1700000000,
 *    "exp":1700000900,"jti":"<22 chars>","kid":"<11 chars>"}
 * where kid is base64url of the first 8 bytes of the signer's public key, so a
 * verifier holding several regions' keys picks the right one. Unknown members
 * are ignored (the "mrd1" prefix versions the format).
 *
 * Refresh token: "mrr1." <session id: 16 random bytes, 22 chars> "." <secret:
 * 32 random bytes, 43 chars>. The database keeps the session id and
 * BLAKE2b-256(secret), never the secret.
 *
 * Tokens, passwords and key material are never logged by this module; callers
 * must not log them either. Everything except the hasher is thread-safe and
 * allocation-free apart from token verification's JSON arena; metrics are
 * updated from the calling thread, so call token functions on the loop. */
#ifndef CORE_AUTH_H
#define CORE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/buf.h"

/* Error codes of this module: below libuv's range, so they never collide. */
#define CORE_AUTH_EMALFORMED (-7001)  /* not a token of this format (also: too long) */
#define CORE_AUTH_EBADSIG (-7002)     /* signature does not verify */
#define CORE_AUTH_EUNKNOWNKEY (-7003) /* kid names no key we hold */
#define CORE_AUTH_EEXPIRED (-7004)    /* exp is past, beyond the leeway */
#define CORE_AUTH_EFUTURE (-7005)     /* iat is in the future, beyond the leeway */
#define CORE_AUTH_ECLAIMS (-7006)     /* a payload field is missing or invalid */
#define CORE_AUTH_EMISMATCH (-7007)   /* password does not match the stored hash */
#define CORE_AUTH_EKEYFILE (-7008)    /* a key file is missing, malformed or too open */

#define CORE_AUTH_ID_MAX 64     /* sub: 1-64 of [A-Za-z0-9_-] */
#define CORE_AUTH_REGION_MAX 32 /* hr: 1-32 of [a-z0-9-] */
#define CORE_AUTH_ROLE_MAX 32   /* each role: 1-32 of [a-z0-9_] */
#define CORE_AUTH_MAX_ROLES 8
#define CORE_AUTH_TOKEN_MAX 2048 /* longer access tokens are refused before any work */
#define CORE_AUTH_LEEWAY_S 30    /* clock skew allowed on iat and exp */
#define CORE_AUTH_KID_LEN 11     /* base64url of 8 bytes */
#define CORE_AUTH_JTI_LEN 22     /* base64url of 16 bytes */
#define CORE_AUTH_SID_LEN 22     /* refresh session id: base64url of 16 bytes */
#define CORE_AUTH_REFRESH_LEN 71 /* "mrr1." + 22 + "." + 43 */
#define CORE_AUTH_PUBKEY_B64_LEN 43
#define CORE_AUTH_EMAIL_MAX 254
#define CORE_AUTH_PW_MIN 8
#define CORE_AUTH_PW_MAX 1024

/* ---- keys ---- */

typedef struct {
    uint8_t pk[32];
    char kid[CORE_AUTH_KID_LEN + 1];
} core_auth_pubkey_t;

typedef struct {
    uint8_t sk[64]; /* Ed25519 secret key (seed + public key) */
    core_auth_pubkey_t pub;
    uint8_t email_key[32]; /* key of the email/slug keyed hash */
    bool loaded;
} core_auth_keys_t;

/* Loads the signing seed and the hash key, each a file holding 64 hex
 * characters and an optional trailing newline. A file readable or writable by
 * group or others is refused; other extra mode bits (e.g. 0700) are logged as
 * a warning. On error returns CORE_AUTH_EKEYFILE (or -errno) and writes a reason
 * naming the file into err; *k is left wiped. */
int core_auth_keys_load(core_auth_keys_t *k, const char *signing_key_path,
                        const char *email_key_path, char *err, size_t errlen);
/* The same from bytes (tests, tools): derives the keypair from the seed. */
void core_auth_keys_from_bytes(core_auth_keys_t *k, const uint8_t seed[32],
                               const uint8_t email_key[32]);
/* Wipes every key byte (sodium_memzero). Safe to call twice. */
void core_auth_keys_wipe(core_auth_keys_t *k);
/* Reads one key file as described above into out. */
int core_auth_key_file_read(const char *path, uint8_t out[32], char *err, size_t errlen);
/* Writes 32 fresh random bytes as 64 hex characters and a newline, mode 0600.
 * Refuses to overwrite an existing file (UV_EEXIST). Returns 0 or -errno. */
int core_auth_key_generate_file(const char *path);
/* A public key as 43 base64url characters (for configuration and tools). */
void core_auth_pubkey_format(const core_auth_pubkey_t *pub, char out[CORE_AUTH_PUBKEY_B64_LEN + 1]);
/* Parses the 43-character form and derives the kid. 0 or CORE_AUTH_EMALFORMED. */
int core_auth_pubkey_parse(core_auth_pubkey_t *pub, const char *b64, size_t len);

/* ---- access tokens ---- */

typedef struct {
    char sub[CORE_AUTH_ID_MAX + 1];
    char hr[CORE_AUTH_REGION_MAX + 1];
    char roles[CORE_AUTH_MAX_ROLES][CORE_AUTH_ROLE_MAX + 1];
    int nroles;
    int64_t iat; /* unix seconds */
    int64_t exp; /* unix seconds, > iat */
    char jti[CORE_AUTH_JTI_LEN + 1];
    char kid[CORE_AUTH_KID_LEN + 1];
} core_auth_claims_t;

/* A fresh random token id (22 base64url characters). */
void core_auth_jti_new(char out[CORE_AUTH_JTI_LEN + 1]);

/* Signs c with k and appends the token to out. The jti is c->jti when set
 * (it must then be 22 base64url characters), otherwise a fresh random one;
 * c->kid is ignored (the key's own is used). Returns 0, CORE_AUTH_ECLAIMS when
 * a field would not pass verification, or UV_EINVAL when k is not loaded. */
int core_auth_token_issue(const core_auth_keys_t *k, const core_auth_claims_t *c, core_buf_t *out);

/* Verifies a token against the key whose kid it names, among keys[0..nkeys).
 * Checks, in order: length and shape (CORE_AUTH_EMALFORMED), key
 * (CORE_AUTH_EUNKNOWNKEY), signature (CORE_AUTH_EBADSIG), fields
 * (CORE_AUTH_ECLAIMS), then time with CORE_AUTH_LEEWAY_S of skew: expired when
 * now >= exp + leeway (CORE_AUTH_EEXPIRED), refused when iat > now + leeway
 * (CORE_AUTH_EFUTURE). *out is written only on success. */
int core_auth_token_verify(const core_auth_pubkey_t *keys, size_t nkeys, const char *token,
                           size_t len, int64_t now, core_auth_claims_t *out);

/* The access token a request presents: Authorization: Bearer, else (for a
 * browser's WebSocket, which cannot set headers) a "bearer.<token>" entry of
 * Sec-WebSocket-Protocol, else ?access_token=. Copies it into out (cap >=
 * CORE_AUTH_TOKEN_MAX + 1) and returns its length, or UV_ENOENT when there is
 * none (an over-long one counts as none). */
struct core_http_req_s;
int core_auth_request_token(const struct core_http_req_s *req, char *out, size_t cap);

/* The digests of the tokens a node's workers verified, in memory shared by
 * them all (mapped by the master before it forks, so it outlives a worker
 * that is killed and restarted). A worker whose own cache misses finds here
 * whether another worker, or its own predecessor, already checked these
 * exact bytes' signature: a keyed BLAKE2b (192 bits) of the whole token,
 * set-associative, lock-free (a seqlock per slot). A hit skips Ed25519 only:
 * the payload is parsed and its kid, claims and time checked again. In a
 * reconnect storm the kernel hands a returning client to any worker, and a
 * restarted worker starts cold: without this, every return costs a
 * verification. NULL when mmap fails. */
typedef struct core_auth_token_seen_s core_auth_token_seen_t;
/* A node's table: 4 MiB, room for ~100,000 sessions' tokens (bench/ws holds
 * 100,000 streams on one node). */
#define CORE_AUTH_SEEN_SLOTS (1u << 17)
core_auth_token_seen_t *core_auth_token_seen_shared_new(size_t slots);
/* The master's, at exit; NULL is a no-op. */
void core_auth_token_seen_free(core_auth_token_seen_t *seen);

/* A per-worker cache of verified tokens: Ed25519 verification costs ~50 us,
 * a hit ~1 us. Direct-mapped on a keyed BLAKE2b of the token; only tokens that
 * verified are stored, and a hit still checks exp/iat against now and that
 * the caller still holds a key with the token's kid (a kid is derived from
 * its key). Not thread-safe: one per loop. seen (may be NULL, not owned) is
 * the node's shared table, consulted and filled on this cache's misses. */
typedef struct core_auth_token_cache_s core_auth_token_cache_t;
core_auth_token_cache_t *core_auth_token_cache_new(size_t slots, core_auth_token_seen_t *seen);
void core_auth_token_cache_clear(core_auth_token_cache_t *cache);
/* NULL is a no-op. */
void core_auth_token_cache_free(core_auth_token_cache_t *cache);
/* core_auth_token_verify through the cache (cache may be NULL). */
int core_auth_token_verify_cached(core_auth_token_cache_t *cache, const core_auth_pubkey_t *keys,
                                  size_t nkeys, const char *token, size_t len, int64_t now,
                                  core_auth_claims_t *out);

/* A constant description of this module's codes (and of UV_E* codes). */
const char *core_auth_strerror(int err);

/* ---- refresh tokens ---- */

/* Mints a refresh token into token_out (cap >= CORE_AUTH_REFRESH_LEN + 1), its
 * session id into session_id_out (CORE_AUTH_SID_LEN + 1 bytes) and the hash of
 * its secret (the value to store). Returns 0 or UV_ENOBUFS. */
int core_auth_refresh_new(char *token_out, size_t cap, char *session_id_out,
                          uint8_t secret_hash_out[32]);
/* Splits a presented refresh token into its session id and the hash of its
 * secret, to look up and compare. Returns 0 or CORE_AUTH_EMALFORMED. */
int core_auth_refresh_parse(const char *token, size_t len, char *session_id_out,
                            uint8_t secret_hash_out[32]);
/* Compares two secret hashes in constant time. */
bool core_auth_hash_equal(const uint8_t a[32], const uint8_t b[32]);

/* ---- keyed hashes (emails, slugs) ---- */

typedef enum {
    CORE_AUTH_HASH_EMAIL, /* domain prefix "email\0" */
    CORE_AUTH_HASH_SLUG,  /* domain prefix "slug\0" */
} core_auth_hash_kind_t;

/* Trims surrounding whitespace and lower-cases ASCII into out (NUL-terminated).
 * Refuses (UV_EINVAL) anything that is not a plausible address: 3-254 bytes,
 * exactly one '@', non-empty local and domain parts, no spaces or control
 * characters. UV_ENOBUFS when cap is too small (CORE_AUTH_EMAIL_MAX + 1 is enough). */
int core_auth_email_normalise(const char *in, size_t len, char *out, size_t cap);
/* BLAKE2b-256 keyed with k->email_key over "email\0" + the normalised email.
 * Returns 0 or UV_EINVAL (not a plausible address; out untouched). */
int core_auth_email_hash(const core_auth_keys_t *k, const char *email, size_t len, uint8_t out[32]);
/* BLAKE2b-256 keyed with k->email_key over the kind's prefix + data. */
void core_auth_key_hash(const core_auth_keys_t *k, core_auth_hash_kind_t kind, const void *data,
                        size_t len, uint8_t out[32]);

/* ---- passwords ---- */

/* Policy: 8-1024 bytes of valid UTF-8. Returns 0, or UV_EINVAL with *why set
 * to a constant message fit for an API error. */
int core_auth_password_ok(const char *pw, size_t len, const char **why);

/* The argon2id hash of a random password nobody knows, to verify against
 * when the user does not exist so that both cases take the same time. It is
 * computed once per process, on the thread pool by the first hasher created
 * (its warm-up job); called earlier, this computes it on the calling thread
 * (~90 ms). Prefer passing stored_hash NULL to core_auth_verify_password. */
const char *core_auth_dummy_hash(void);

typedef struct core_auth_hasher_s core_auth_hasher_t;
typedef struct core_auth_job_s core_auth_job_t;

/* result 0: hash is the encoded argon2id string (valid during the call only);
 * otherwise UV_ENOMEM or UV_ECANCELED (hasher freed) and hash is NULL. */
typedef void (*core_auth_hash_cb)(int result, const char *hash, void *ud);
/* result 0: the password matches; CORE_AUTH_EMISMATCH: it does not (always, for
 * the dummy hash); UV_ECANCELED: the hasher was freed. */
typedef void (*core_auth_verify_cb)(int result, void *ud);

/* A per-worker scheduler of argon2id jobs on the loop's thread pool: at most
 * max_concurrent run at once (each takes ~90 ms and 64 MiB) and at most
 * max_queued more wait in FIFO order. When the process has no dummy hash yet,
 * a warm-up job computing it is queued first. */
core_auth_hasher_t *core_auth_hasher_new(uv_loop_t *loop, int max_concurrent, int max_queued);

/* Hashes a password (crypto_pwhash_str, argon2id, interactive limits). The
 * password is copied into memory that is wiped after use. Returns 0 and calls
 * cb on the loop exactly once (unless the job is cancelled), or returns
 * UV_EBUSY at once when max_queued jobs already wait (answer 503 +
 * Retry-After), UV_EINVAL for a password over CORE_AUTH_PW_MAX bytes or a NULL
 * cb, UV_ECANCELED after core_auth_hasher_free; the callback is then never
 * called. *out (may be NULL) receives a handle for core_auth_job_cancel. */
int core_auth_hash_password(core_auth_hasher_t *h, const char *pw, size_t len, core_auth_hash_cb cb,
                            void *ud, core_auth_job_t **out);
/* Verifies a password against a stored argon2id string, or against the dummy
 * hash when stored_hash is NULL (the user does not exist). Same contract as
 * core_auth_hash_password; a stored_hash that is not an argon2id string is
 * UV_EINVAL. */
int core_auth_verify_password(core_auth_hasher_t *h, const char *stored_hash, const char *pw,
                              size_t len, core_auth_verify_cb cb, void *ud, core_auth_job_t **out);
/* Ensures the job's callback is never called (the client went away). A job
 * still waiting is dropped; a running one finishes on the pool and is freed
 * afterwards. The handle is invalid once cancel returns or the callback has
 * started; cancelling from inside the job's own callback is a no-op. */
void core_auth_job_cancel(core_auth_job_t *job);

/* Jobs waiting or running (for tests and readiness). */
size_t core_auth_hasher_pending(const core_auth_hasher_t *h);

/* Every job not yet called back gets its callback with UV_ECANCELED before
 * this returns (except cancelled ones). Memory is released once the loop has
 * run the close callback and every running job has finished, so a second call
 * is safe until then (not after: drop the pointer). Safe from inside a
 * callback; NULL is a no-op. */
void core_auth_hasher_free(core_auth_hasher_t *h);

/* Tests only: probe(+1, arg) on the pool thread when a job's work starts and
 * probe(-1, arg) when it ends. */
void core_auth_hasher_set_probe(core_auth_hasher_t *h, void (*probe)(int delta, void *arg),
                                void *arg);

/* Registers this module's metrics; call once per worker after
 * core_metrics_set_worker (core_auth_hasher_new calls it too). Idempotent. */
void core_auth_metrics_init(void);

#endif
