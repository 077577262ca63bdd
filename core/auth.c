/* auth.c: keys, access and refresh tokens, keyed hashes, password hashing. */
#include "core/auth.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "core/http.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ws.h"

#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define TOKEN_PREFIX "mrd1."
#define REFRESH_PREFIX "mrr1."
#define PREFIX_LEN 5
#define SIG_B64_LEN 86    /* base64url of 64 bytes */
#define SECRET_B64_LEN 43 /* base64url of 32 bytes */

/* ---------------------------------------------------------------- metrics */

enum {
    TOK_OK,
    TOK_MALFORMED,
    TOK_BADSIG,
    TOK_UNKNOWNKEY,
    TOK_EXPIRED,
    TOK_FUTURE,
    TOK_CLAIMS,
    TOK_N,
};
static const char *const tok_labels[TOK_N] = {
    "result=\"ok\"",
    "result=\"malformed\"",
    "result=\"bad_signature\"",
    "result=\"unknown_key\"",
    "result=\"expired\"",
    "result=\"not_yet_valid\"",
    "result=\"invalid_claims\"",
};
/* -1 until registered: updates through an invalid handle are no-ops. */
static core_metric_t m_tok[TOK_N] = {-1, -1, -1, -1, -1, -1, -1};
static core_metric_t m_cache_hits = -1;
static core_metric_t m_hashes = -1, m_verify_ok = -1, m_verify_failed = -1, m_rejected = -1;

void core_auth_metrics_init(void)
{
    for (int i = 0; i < TOK_N; i++)
        m_tok[i] = core_metrics_counter("meridian_auth_token_verifications_total",
                                        "Access token verifications by result.", tok_labels[i]);
    m_cache_hits =
        core_metrics_counter("meridian_auth_token_cache_hits_total",
                             "Access tokens answered from the verified-token cache.", "");
    m_hashes = core_metrics_counter("meridian_auth_password_hashes_total",
                                    "Password hashes computed (argon2id).", "");
    m_verify_ok = core_metrics_counter("meridian_auth_password_verifications_total",
                                       "Password verifications by result.", "result=\"ok\"");
    m_verify_failed =
        core_metrics_counter("meridian_auth_password_verifications_total",
                             "Password verifications by result.", "result=\"failed\"");
    m_rejected = core_metrics_counter("meridian_auth_password_rejected_total",
                                      "Password jobs refused because the queue was full.", "");
}

/* ---------------------------------------------------------------- helpers */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool is_b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static bool valid_id(const char *s, size_t n)
{
    if (n < 1 || n > CORE_AUTH_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_b64url_char(s[i]))
            return false;
    return true;
}

static bool valid_region(const char *s, size_t n)
{
    if (n < 1 || n > CORE_AUTH_REGION_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool valid_role(const char *s, size_t n)
{
    if (n < 1 || n > CORE_AUTH_ROLE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static bool valid_b64_fixed(const char *s, size_t n, size_t want)
{
    if (n != want)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_b64url_char(s[i]))
            return false;
    return true;
}

/* Decodes exactly the whole of b64 (strict: no padding, no ignored bytes,
 * canonical trailing bits) into exactly want bytes, or into at most cap. */
static int b64_decode(uint8_t *bin, size_t cap, const char *b64, size_t len, size_t *binlen)
{
    const char *end = NULL;
    if (len == 0 || sodium_base642bin(bin, cap, b64, len, NULL, binlen, &end, B64) != 0 ||
        end != b64 + len)
        return -1;
    return 0;
}

static void b64_encode(char *out, size_t cap, const uint8_t *bin, size_t len)
{
    assert(cap >= sodium_base64_ENCODED_LEN(len, B64));
    sodium_bin2base64(out, cap, bin, len, B64);
}

/* ---------------------------------------------------------------- keys */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_key_file(const char *path, uint8_t out[32], char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open key file: %s", path, strerror(errno));
        return CORE_AUTH_EKEYFILE;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: key file is not a regular file", path);
        close(fd);
        return CORE_AUTH_EKEYFILE;
    }
    /* Another user who can read the key can forge tokens; one who can write it
     * can swap it. */
    if (st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
        set_err(err, errlen,
                "%s: key file is readable or writable by group or others (mode %04o); "
                "chmod 600 it",
                path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return CORE_AUTH_EKEYFILE;
    }
    if (st.st_mode & 07177) {
        char q[256];
        core_log_warn("auth.key_file_mode", "path=%s mode=%04o want=0600",
                      core_log_quote(q, sizeof q, path, strlen(path)),
                      (unsigned)(st.st_mode & 07777));
    }
    char buf[80];
    size_t n = 0;
    while (n < sizeof buf) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_err(err, errlen, "%s: cannot read key file: %s", path, strerror(errno));
            close(fd);
            sodium_memzero(buf, sizeof buf);
            return CORE_AUTH_EKEYFILE;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    size_t len = n;
    if (len == 65 && buf[64] == '\n')
        len = 64;
    int rc = 0;
    if (len != 64) {
        set_err(err, errlen,
                "%s: key file must hold 64 hex characters (32 bytes) and an optional newline, "
                "found %lld bytes",
                path, (long long)(n == sizeof buf ? st.st_size : (off_t)n));
        rc = CORE_AUTH_EKEYFILE;
    }
    for (size_t i = 0; rc == 0 && i < 32; i++) {
        int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            set_err(err, errlen, "%s: key file is not hex (at byte %zu)", path,
                    hi < 0 ? 2 * i : 2 * i + 1);
            rc = CORE_AUTH_EKEYFILE;
            break;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    sodium_memzero(buf, sizeof buf);
    return rc;
}

int core_auth_key_file_read(const char *path, uint8_t out[32], char *err, size_t errlen)
{
    int rc = read_key_file(path, out, err, errlen);
    if (rc != 0)
        sodium_memzero(out, 32); /* no half-read key survives an error */
    return rc;
}

void core_auth_keys_from_bytes(core_auth_keys_t *k, const uint8_t seed[32],
                               const uint8_t email_key[32])
{
    memset(k, 0, sizeof *k);
    crypto_sign_seed_keypair(k->pub.pk, k->sk, seed);
    b64_encode(k->pub.kid, sizeof k->pub.kid, k->pub.pk, 8);
    memcpy(k->email_key, email_key, 32);
    k->loaded = true;
}

int core_auth_keys_load(core_auth_keys_t *k, const char *signing_key_path,
                        const char *email_key_path, char *err, size_t errlen)
{
    uint8_t seed[32], ekey[32];
    memset(k, 0, sizeof *k);
    int rc = core_auth_key_file_read(signing_key_path, seed, err, errlen);
    if (rc == 0)
        rc = core_auth_key_file_read(email_key_path, ekey, err, errlen);
    if (rc == 0)
        core_auth_keys_from_bytes(k, seed, ekey);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(ekey, sizeof ekey);
    return rc;
}

void core_auth_keys_wipe(core_auth_keys_t *k)
{
    if (k)
        sodium_memzero(k, sizeof *k);
}

int core_auth_key_generate_file(const char *path)
{
    uint8_t key[32];
    char hex[66];
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(hex, 65, key, sizeof key);
    hex[64] = '\n';
    sodium_memzero(key, sizeof key);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    int rc = 0;
    if (fd < 0) {
        rc = -errno;
    } else {
        /* The umask can only narrow the mode; fchmod makes it exact. */
        size_t off = 0;
        if (fchmod(fd, 0600) != 0)
            rc = -errno;
        while (rc == 0 && off < 65) {
            ssize_t w = write(fd, hex + off, 65 - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                rc = -errno;
            else
                off += (size_t)w;
        }
        if (rc == 0 && fsync(fd) != 0)
            rc = -errno;
        close(fd);
        if (rc != 0)
            unlink(path);
    }
    sodium_memzero(hex, sizeof hex);
    return rc;
}

void core_auth_pubkey_format(const core_auth_pubkey_t *pub, char out[CORE_AUTH_PUBKEY_B64_LEN + 1])
{
    b64_encode(out, CORE_AUTH_PUBKEY_B64_LEN + 1, pub->pk, 32);
}

int core_auth_pubkey_parse(core_auth_pubkey_t *pub, const char *b64, size_t len)
{
    uint8_t pk[32];
    size_t n = 0;
    if (len != CORE_AUTH_PUBKEY_B64_LEN || b64_decode(pk, sizeof pk, b64, len, &n) != 0 || n != 32)
        return CORE_AUTH_EMALFORMED;
    memcpy(pub->pk, pk, 32);
    b64_encode(pub->kid, sizeof pub->kid, pk, 8);
    return 0;
}

/* ---------------------------------------------------------------- access tokens */

void core_auth_jti_new(char out[CORE_AUTH_JTI_LEN + 1])
{
    uint8_t r[16];
    randombytes_buf(r, sizeof r);
    b64_encode(out, CORE_AUTH_JTI_LEN + 1, r, sizeof r);
}

static bool claims_ok(const core_auth_claims_t *c)
{
    if (!valid_id(c->sub, strnlen(c->sub, sizeof c->sub)) ||
        !valid_region(c->hr, strnlen(c->hr, sizeof c->hr)) || c->nroles < 0 ||
        c->nroles > CORE_AUTH_MAX_ROLES || c->iat < 0 || c->exp <= c->iat)
        return false;
    for (int i = 0; i < c->nroles; i++)
        if (!valid_role(c->roles[i], strnlen(c->roles[i], sizeof c->roles[i])))
            return false;
    return true;
}

int core_auth_token_issue(const core_auth_keys_t *k, const core_auth_claims_t *c, core_buf_t *out)
{
    if (!k || !k->loaded)
        return UV_EINVAL;
    if (!claims_ok(c))
        return CORE_AUTH_ECLAIMS;
    char jti[CORE_AUTH_JTI_LEN + 1];
    if (c->jti[0]) {
        if (!valid_b64_fixed(c->jti, strnlen(c->jti, sizeof c->jti), CORE_AUTH_JTI_LEN))
            return CORE_AUTH_ECLAIMS;
        memcpy(jti, c->jti, sizeof jti);
    } else {
        core_auth_jti_new(jti);
    }

    core_buf_t p;
    core_buf_init(&p);
    core_jw_t w;
    core_jw_init(&w, &p);
    core_jw_obj_open(&w);
    core_jw_key(&w, "sub");
    core_jw_str(&w, c->sub);
    core_jw_key(&w, "hr");
    core_jw_str(&w, c->hr);
    core_jw_key(&w, "roles");
    core_jw_arr_open(&w);
    for (int i = 0; i < c->nroles; i++)
        core_jw_str(&w, c->roles[i]);
    core_jw_arr_close(&w);
    core_jw_key(&w, "iat");
    core_jw_int(&w, c->iat);
    core_jw_key(&w, "exp");
    core_jw_int(&w, c->exp);
    core_jw_key(&w, "jti");
    core_jw_str(&w, jti);
    core_jw_key(&w, "kid");
    core_jw_str(&w, k->pub.kid);
    core_jw_obj_close(&w);
    size_t plen = p.len;
    size_t start = out->len;
    size_t need = PREFIX_LEN + sodium_base64_ENCODED_LEN(plen, B64) + 1 +
                  sodium_base64_ENCODED_LEN(crypto_sign_BYTES, B64);
    core_buf_reserve(out, need);
    core_buf_append(out, TOKEN_PREFIX, PREFIX_LEN);
    b64_encode(out->base + out->len, out->cap - out->len, (const uint8_t *)p.base, plen);
    core_buf_free(&p);
    out->len += strlen(out->base + out->len);
    uint8_t sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, NULL, (const uint8_t *)out->base + start, out->len - start, k->sk);
    core_buf_putc(out, '.');
    b64_encode(out->base + out->len, out->cap - out->len, sig, sizeof sig);
    out->len += SIG_B64_LEN;
    assert(out->len - start <= CORE_AUTH_TOKEN_MAX);
    return 0;
}

/* A string member's bytes, or false when absent or not a string. */
static bool get_strn(const core_json_t *obj, const char *key, const char **s, size_t *n)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type != CORE_JSON_STRING)
        return false;
    *s = v->u.str.s;
    *n = v->u.str.len;
    return true;
}

static bool get_int(const core_json_t *obj, const char *key, int64_t *out)
{
    const core_json_t *v = core_json_get(obj, key);
    if (!v || v->type != CORE_JSON_NUMBER || !v->u.num.is_int)
        return false;
    *out = v->u.num.i;
    return true;
}

/* Fills *c from a signature-checked payload; false when any field is invalid. */
static bool read_claims(const core_json_t *root, core_auth_claims_t *c)
{
    const char *s;
    size_t n;
    memset(c, 0, sizeof *c);
    if (!get_strn(root, "sub", &s, &n) || !valid_id(s, n))
        return false;
    memcpy(c->sub, s, n);
    if (!get_strn(root, "hr", &s, &n) || !valid_region(s, n))
        return false;
    memcpy(c->hr, s, n);
    const core_json_t *roles = core_json_get(root, "roles");
    if (!roles || roles->type != CORE_JSON_ARRAY || roles->u.kids.n > CORE_AUTH_MAX_ROLES)
        return false;
    for (size_t i = 0; i < roles->u.kids.n; i++) {
        const core_json_t *r = roles->u.kids.items[i];
        if (r->type != CORE_JSON_STRING || !valid_role(r->u.str.s, r->u.str.len))
            return false;
        memcpy(c->roles[i], r->u.str.s, r->u.str.len);
    }
    c->nroles = (int)roles->u.kids.n;
    if (!get_int(root, "iat", &c->iat) || !get_int(root, "exp", &c->exp) || c->iat < 0 ||
        c->exp <= c->iat)
        return false;
    if (!get_strn(root, "jti", &s, &n) || !valid_b64_fixed(s, n, CORE_AUTH_JTI_LEN))
        return false;
    memcpy(c->jti, s, n);
    if (!get_strn(root, "kid", &s, &n) || !valid_b64_fixed(s, n, CORE_AUTH_KID_LEN))
        return false;
    memcpy(c->kid, s, n);
    return true;
}

/* sig_known: the token's exact bytes verified before (a hit in the node's
 * shared table): the signature check is skipped, nothing else is. */
static int verify(const core_auth_pubkey_t *keys, size_t nkeys, const char *token, size_t len,
                  int64_t now, bool sig_known, core_auth_claims_t *out)
{
    /* Bounded before anything else: a huge header costs nothing to refuse. */
    if (!token || len > CORE_AUTH_TOKEN_MAX || len < PREFIX_LEN ||
        memcmp(token, TOKEN_PREFIX, PREFIX_LEN) != 0)
        return CORE_AUTH_EMALFORMED;
    const char *p = token + PREFIX_LEN, *end = token + len;
    const char *dot = memchr(p, '.', (size_t)(end - p));
    if (!dot || memchr(dot + 1, '.', (size_t)(end - dot - 1)))
        return CORE_AUTH_EMALFORMED;
    uint8_t payload[CORE_AUTH_TOKEN_MAX];
    uint8_t sig[crypto_sign_BYTES];
    size_t plen = 0, slen = 0;
    if (b64_decode(payload, sizeof payload, p, (size_t)(dot - p), &plen) != 0 ||
        b64_decode(sig, sizeof sig, dot + 1, (size_t)(end - dot - 1), &slen) != 0 ||
        slen != sizeof sig)
        return CORE_AUTH_EMALFORMED;

    core_json_limits_t lim = {.max_bytes = sizeof payload, .max_depth = 4, .max_string = 256};
    core_json_doc_t *doc = NULL;
    char jerr[128];
    if (core_json_parse((const char *)payload, plen, &lim, &doc, jerr, sizeof jerr) != 0)
        return CORE_AUTH_EMALFORMED;
    const core_json_t *root = core_json_root(doc);
    int rc = CORE_AUTH_EMALFORMED;
    const char *kid;
    size_t kidlen;
    if (root->type != CORE_JSON_OBJECT || !get_strn(root, "kid", &kid, &kidlen) ||
        !valid_b64_fixed(kid, kidlen, CORE_AUTH_KID_LEN))
        goto done;

    /* kid only picks the key; the signature decides. */
    rc = CORE_AUTH_EUNKNOWNKEY;
    for (size_t i = 0; i < nkeys; i++) {
        if (memcmp(keys[i].kid, kid, CORE_AUTH_KID_LEN) != 0)
            continue;
        rc = CORE_AUTH_EBADSIG;
        if (sig_known || crypto_sign_verify_detached(sig, (const uint8_t *)token,
                                                     (size_t)(dot - token), keys[i].pk) == 0) {
            rc = 0;
            break;
        }
    }
    if (rc != 0)
        goto done;

    core_auth_claims_t c;
    if (!read_claims(root, &c)) {
        rc = CORE_AUTH_ECLAIMS;
        goto done;
    }
    if (now >= c.exp + CORE_AUTH_LEEWAY_S)
        rc = CORE_AUTH_EEXPIRED;
    else if (c.iat > now + CORE_AUTH_LEEWAY_S)
        rc = CORE_AUTH_EFUTURE;
    else if (out)
        *out = c;
done:
    core_json_free(doc);
    return rc;
}

/* Counts one verification's result in meridian_auth_token_verifications_total. */
static int count_result(int rc)
{
    int idx;
    switch (rc) {
    case 0:
        idx = TOK_OK;
        break;
    case CORE_AUTH_EBADSIG:
        idx = TOK_BADSIG;
        break;
    case CORE_AUTH_EUNKNOWNKEY:
        idx = TOK_UNKNOWNKEY;
        break;
    case CORE_AUTH_EEXPIRED:
        idx = TOK_EXPIRED;
        break;
    case CORE_AUTH_EFUTURE:
        idx = TOK_FUTURE;
        break;
    case CORE_AUTH_ECLAIMS:
        idx = TOK_CLAIMS;
        break;
    default:
        idx = TOK_MALFORMED;
        break;
    }
    core_metrics_add(m_tok[idx], 1);
    return rc;
}

int core_auth_token_verify(const core_auth_pubkey_t *keys, size_t nkeys, const char *token,
                           size_t len, int64_t now, core_auth_claims_t *out)
{
    return count_result(verify(keys, nkeys, token, len, now, false, out));
}

/* ---- the node's shared table of verified tokens ---- */

/* A slot is a seqlock: seq is odd while a worker writes it, and a reader
 * that saw it change (or odd) counts a miss. The digest is three words read
 * and written atomically, so that a torn read is a miss and never undefined.
 * A worker killed mid-write leaves its slot odd: that slot stays a miss, and
 * nothing waits on it. */
typedef struct {
    _Atomic uint32_t seq; /* 0: never written */
    uint32_t pad;
    _Atomic uint64_t d[3]; /* 192 bits of a keyed BLAKE2b of the whole token */
} seen_slot_t;

#define SEEN_WAYS 2 /* slots per bucket: two share a cache line */

struct core_auth_token_seen_s {
    uint8_t key[32]; /* random, written before fork: every worker hashes alike */
    size_t nbuckets;
    size_t map_len;
    seen_slot_t slots[]; /* nbuckets * SEEN_WAYS */
};

core_auth_token_seen_t *core_auth_token_seen_shared_new(size_t slots)
{
    size_t nb = slots / SEEN_WAYS ? slots / SEEN_WAYS : 1;
    size_t len = sizeof(core_auth_token_seen_t) + nb * SEEN_WAYS * sizeof(seen_slot_t);
    core_auth_token_seen_t *t =
        mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return NULL;
    /* Fresh anonymous pages are zero: every slot is empty (seq 0). */
    randombytes_buf(t->key, sizeof t->key);
    t->nbuckets = nb;
    t->map_len = len;
    return t;
}

void core_auth_token_seen_free(core_auth_token_seen_t *t)
{
    if (t)
        munmap(t, t->map_len);
}

static seen_slot_t *seen_bucket(const core_auth_token_seen_t *t, const uint64_t d[3])
{
    return (seen_slot_t *)&t->slots[(d[0] % t->nbuckets) * SEEN_WAYS];
}

static bool seen_has(const core_auth_token_seen_t *t, const uint64_t d[3])
{
    seen_slot_t *b = seen_bucket(t, d);
    for (int i = 0; i < SEEN_WAYS; i++) {
        seen_slot_t *s = &b[i];
        uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (s1 == 0 || (s1 & 1))
            continue;
        bool same = true;
        for (int k = 0; k < 3; k++)
            same = same && atomic_load_explicit(&s->d[k], memory_order_relaxed) == d[k];
        atomic_thread_fence(memory_order_acquire);
        if (same && atomic_load_explicit(&s->seq, memory_order_relaxed) == s1)
            return true;
    }
    return false;
}

static void seen_put(core_auth_token_seen_t *t, const uint64_t d[3])
{
    seen_slot_t *b = seen_bucket(t, d);
    /* An empty way first; else the one the digest's second word picks. */
    seen_slot_t *s = &b[(d[1] >> 7) % SEEN_WAYS];
    for (int i = 0; i < SEEN_WAYS; i++)
        if (atomic_load_explicit(&b[i].seq, memory_order_relaxed) == 0) {
            s = &b[i];
            break;
        }
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    /* Another worker writes it (or died writing it): skip, it is a cache. */
    if ((seq & 1) || !atomic_compare_exchange_strong_explicit(
                         &s->seq, &seq, seq + 1, memory_order_acq_rel, memory_order_relaxed))
        return;
    for (int k = 0; k < 3; k++)
        atomic_store_explicit(&s->d[k], d[k], memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

static void seen_digest(const core_auth_token_seen_t *t, const char *token, size_t len,
                        uint64_t d[3])
{
    uint8_t h[24];
    crypto_generichash(h, sizeof h, (const uint8_t *)token, len, t->key, sizeof t->key);
    memcpy(d, h, sizeof h);
}

/* ---- a worker's own cache ---- */

typedef struct {
    uint8_t digest[32];
    bool used;
    core_auth_claims_t claims;
} cache_slot_t;

struct core_auth_token_cache_s {
    uint8_t key[32]; /* random: nobody can aim tokens at one slot */
    size_t nslots;
    cache_slot_t *slots;
    core_auth_token_seen_t *seen; /* the node's, or NULL; not owned */
};

/* A hit counts only while its signer is still trusted by this caller. */
static bool kid_held(const core_auth_pubkey_t *keys, size_t nkeys, const char *kid)
{
    for (size_t i = 0; i < nkeys; i++)
        if (memcmp(keys[i].kid, kid, CORE_AUTH_KID_LEN) == 0)
            return true;
    return false;
}

core_auth_token_cache_t *core_auth_token_cache_new(size_t slots, core_auth_token_seen_t *seen)
{
    core_auth_token_cache_t *c = core_xcalloc(1, sizeof *c);
    c->nslots = slots ? slots : 1;
    c->slots = core_xcalloc(c->nslots, sizeof *c->slots);
    randombytes_buf(c->key, sizeof c->key);
    c->seen = seen;
    return c;
}

void core_auth_token_cache_clear(core_auth_token_cache_t *c)
{
    memset(c->slots, 0, c->nslots * sizeof *c->slots);
}

void core_auth_token_cache_free(core_auth_token_cache_t *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c);
}

int core_auth_token_verify_cached(core_auth_token_cache_t *c, const core_auth_pubkey_t *keys,
                                  size_t nkeys, const char *token, size_t len, int64_t now,
                                  core_auth_claims_t *out)
{
    if (!c || !token || len > CORE_AUTH_TOKEN_MAX)
        return core_auth_token_verify(keys, nkeys, token, len, now, out);
    uint8_t d[32];
    crypto_generichash(d, sizeof d, (const uint8_t *)token, len, c->key, sizeof c->key);
    uint64_t h;
    memcpy(&h, d, sizeof h);
    cache_slot_t *s = &c->slots[h % c->nslots];
    if (s->used && memcmp(s->digest, d, sizeof d) == 0 && kid_held(keys, nkeys, s->claims.kid)) {
        int rc = 0;
        if (now >= s->claims.exp + CORE_AUTH_LEEWAY_S)
            rc = CORE_AUTH_EEXPIRED;
        else if (s->claims.iat > now + CORE_AUTH_LEEWAY_S)
            rc = CORE_AUTH_EFUTURE;
        else if (out)
            *out = s->claims;
        core_metrics_add(m_cache_hits, 1);
        return count_result(rc);
    }
    /* Another worker of this node verified these exact bytes: everything
     * but the signature is checked again (kid still held, claims, time),
     * for a few us instead of Ed25519's ~50. After a worker restarts, this
     * is what keeps its clients' return from costing a verification each. */
    uint64_t sd[3];
    bool seen = false;
    if (c->seen) {
        seen_digest(c->seen, token, len, sd);
        seen = seen_has(c->seen, sd);
        if (seen)
            core_metrics_add(m_cache_hits, 1);
    }
    core_auth_claims_t claims;
    int rc = count_result(verify(keys, nkeys, token, len, now, seen, &claims));
    if (rc == 0) {
        memcpy(s->digest, d, sizeof d);
        s->claims = claims;
        s->used = true;
        if (c->seen && !seen)
            seen_put(c->seen, sd);
        if (out)
            *out = claims;
    }
    return rc;
}

const char *core_auth_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case CORE_AUTH_EMALFORMED:
        return "malformed token";
    case CORE_AUTH_EBADSIG:
        return "bad token signature";
    case CORE_AUTH_EUNKNOWNKEY:
        return "token signed by an unknown key";
    case CORE_AUTH_EEXPIRED:
        return "token expired";
    case CORE_AUTH_EFUTURE:
        return "token issued in the future";
    case CORE_AUTH_ECLAIMS:
        return "invalid token claims";
    case CORE_AUTH_EMISMATCH:
        return "password does not match";
    case CORE_AUTH_EKEYFILE:
        return "bad key file";
    default:
        return uv_strerror(err);
    }
}

/* ---------------------------------------------------------------- refresh tokens */

int core_auth_refresh_new(char *token_out, size_t cap, char *session_id_out,
                          uint8_t secret_hash_out[32])
{
    if (cap < CORE_AUTH_REFRESH_LEN + 1)
        return UV_ENOBUFS;
    uint8_t sid[16], secret[32];
    randombytes_buf(sid, sizeof sid);
    randombytes_buf(secret, sizeof secret);
    memcpy(token_out, REFRESH_PREFIX, PREFIX_LEN);
    b64_encode(token_out + PREFIX_LEN, CORE_AUTH_SID_LEN + 1, sid, sizeof sid);
    token_out[PREFIX_LEN + CORE_AUTH_SID_LEN] = '.';
    b64_encode(token_out + PREFIX_LEN + CORE_AUTH_SID_LEN + 1, SECRET_B64_LEN + 1, secret,
               sizeof secret);
    memcpy(session_id_out, token_out + PREFIX_LEN, CORE_AUTH_SID_LEN);
    session_id_out[CORE_AUTH_SID_LEN] = '\0';
    crypto_generichash(secret_hash_out, 32, secret, sizeof secret, NULL, 0);
    sodium_memzero(secret, sizeof secret);
    return 0;
}

int core_auth_refresh_parse(const char *token, size_t len, char *session_id_out,
                            uint8_t secret_hash_out[32])
{
    const size_t dot = PREFIX_LEN + CORE_AUTH_SID_LEN;
    if (!token || len != CORE_AUTH_REFRESH_LEN || memcmp(token, REFRESH_PREFIX, PREFIX_LEN) != 0 ||
        token[dot] != '.')
        return CORE_AUTH_EMALFORMED;
    uint8_t sid[16], secret[32];
    size_t n1 = 0, n2 = 0;
    int rc = 0;
    if (b64_decode(sid, sizeof sid, token + PREFIX_LEN, CORE_AUTH_SID_LEN, &n1) != 0 ||
        n1 != sizeof sid ||
        b64_decode(secret, sizeof secret, token + dot + 1, SECRET_B64_LEN, &n2) != 0 ||
        n2 != sizeof secret) {
        rc = CORE_AUTH_EMALFORMED;
    } else {
        memcpy(session_id_out, token + PREFIX_LEN, CORE_AUTH_SID_LEN);
        session_id_out[CORE_AUTH_SID_LEN] = '\0';
        crypto_generichash(secret_hash_out, 32, secret, sizeof secret, NULL, 0);
    }
    sodium_memzero(secret, sizeof secret);
    return rc;
}

bool core_auth_hash_equal(const uint8_t a[32], const uint8_t b[32])
{
    return sodium_memcmp(a, b, 32) == 0;
}

/* ---------------------------------------------------------------- keyed hashes */

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int core_auth_email_normalise(const char *in, size_t len, char *out, size_t cap)
{
    if (!in)
        return UV_EINVAL;
    while (len > 0 && is_space((unsigned char)in[0])) {
        in++;
        len--;
    }
    while (len > 0 && is_space((unsigned char)in[len - 1]))
        len--;
    if (len < 3 || len > CORE_AUTH_EMAIL_MAX)
        return UV_EINVAL;
    size_t at = len, nat = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= 0x20 || c == 0x7f)
            return UV_EINVAL;
        if (c == '@') {
            at = i;
            nat++;
        }
    }
    if (nat != 1 || at == 0 || at == len - 1)
        return UV_EINVAL;
    if (cap < len + 1)
        return UV_ENOBUFS;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[len] = '\0';
    return 0;
}

void core_auth_key_hash(const core_auth_keys_t *k, core_auth_hash_kind_t kind, const void *data,
                        size_t len, uint8_t out[32])
{
    /* The prefix keeps an email and a slug with the same bytes apart. */
    static const char email_prefix[] = "email"; /* sizeof includes the NUL */
    static const char slug_prefix[] = "slug";
    const char *prefix = kind == CORE_AUTH_HASH_EMAIL ? email_prefix : slug_prefix;
    size_t plen = kind == CORE_AUTH_HASH_EMAIL ? sizeof email_prefix : sizeof slug_prefix;
    crypto_generichash_state st;
    crypto_generichash_init(&st, k->email_key, sizeof k->email_key, 32);
    crypto_generichash_update(&st, (const uint8_t *)prefix, plen);
    crypto_generichash_update(&st, data, len);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

int core_auth_email_hash(const core_auth_keys_t *k, const char *email, size_t len, uint8_t out[32])
{
    char norm[CORE_AUTH_EMAIL_MAX + 1];
    int rc = core_auth_email_normalise(email, len, norm, sizeof norm);
    if (rc != 0)
        return rc == UV_ENOBUFS ? UV_EINVAL : rc;
    core_auth_key_hash(k, CORE_AUTH_HASH_EMAIL, norm, strlen(norm), out);
    return 0;
}

/* ---------------------------------------------------------------- passwords */

int core_auth_password_ok(const char *pw, size_t len, const char **why)
{
    const char *msg = NULL;
    if (!pw || len < CORE_AUTH_PW_MIN)
        msg = "the password must be at least 8 bytes long";
    else if (len > CORE_AUTH_PW_MAX)
        msg = "the password must be at most 1024 bytes long";
    else if (!core_ws_utf8_valid((const uint8_t *)pw, len))
        msg = "the password must be valid UTF-8";
    if (why)
        *why = msg;
    return msg ? UV_EINVAL : 0;
}

static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static char dummy_hash[crypto_pwhash_STRBYTES];
static atomic_bool dummy_ready;

static void make_dummy(void)
{
    uint8_t pw[32];
    randombytes_buf(pw, sizeof pw);
    /* Without it logins of unknown users would be measurably faster. */
    if (crypto_pwhash_str(dummy_hash, (const char *)pw, sizeof pw,
                          crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
        abort();
    sodium_memzero(pw, sizeof pw);
    atomic_store(&dummy_ready, true);
}

const char *core_auth_dummy_hash(void)
{
    pthread_once(&dummy_once, make_dummy);
    return dummy_hash;
}

typedef enum { JOB_HASH, JOB_VERIFY, JOB_WARMUP } job_kind_t;
typedef enum { JS_WAITING, JS_RUNNING, JS_CALLING } job_state_t;

struct core_auth_job_s {
    uv_work_t work;
    core_auth_hasher_t *h;
    core_auth_job_t *prev, *next; /* in h->waiting or h->running */
    job_kind_t kind;
    job_state_t state;
    bool cancelled; /* no callback any more */
    bool dummy;     /* verify against the dummy hash */
    int result;
    core_auth_hash_cb hash_cb;
    core_auth_verify_cb verify_cb;
    void *ud;
    size_t pwlen;
    char hash[crypto_pwhash_STRBYTES]; /* stored hash (verify) or result (hash) */
    char pw[CORE_AUTH_PW_MAX];
};

typedef struct {
    core_auth_job_t *head, *tail;
    size_t n;
} job_list_t;

struct core_auth_hasher_s {
    uv_loop_t *loop;
    uv_idle_t closer; /* never started: closing it defers release to the loop */
    int max_concurrent;
    size_t max_queued;
    job_list_t waiting;
    job_list_t running;
    bool closing;
    bool closed;
    void (*probe)(int delta, void *arg);
    void *probe_arg;
};

static void list_push(job_list_t *l, core_auth_job_t *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void list_remove(job_list_t *l, core_auth_job_t *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static void free_job(core_auth_job_t *j)
{
    sodium_memzero(j->pw, sizeof j->pw);
    sodium_memzero(j->hash, sizeof j->hash);
    free(j);
}

static void job_work(uv_work_t *w)
{
    core_auth_job_t *j = CORE_CONTAINER_OF(w, core_auth_job_t, work);
    core_auth_hasher_t *h = j->h;
    if (h->probe)
        h->probe(+1, h->probe_arg);
    switch (j->kind) {
    case JOB_HASH:
        errno = 0;
        j->result = crypto_pwhash_str(j->hash, j->pw, j->pwlen, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                      crypto_pwhash_MEMLIMIT_INTERACTIVE) == 0
                        ? 0
                        : UV_ENOMEM;
        break;
    case JOB_VERIFY: {
        const char *stored = j->dummy ? core_auth_dummy_hash() : j->hash;
        errno = 0;
        int rc = crypto_pwhash_str_verify(stored, j->pw, j->pwlen);
        if (rc == 0 && !j->dummy)
            j->result = 0;
        else if (rc != 0 && errno == ENOMEM)
            j->result = UV_ENOMEM;
        else
            j->result = CORE_AUTH_EMISMATCH;
        break;
    }
    case JOB_WARMUP:
        core_auth_dummy_hash();
        j->result = 0;
        break;
    }
    sodium_memzero(j->pw, j->pwlen);
    if (h->probe)
        h->probe(-1, h->probe_arg);
}

static void maybe_release(core_auth_hasher_t *h)
{
    if (h->closed && h->running.n == 0)
        free(h);
}

static void call_back(core_auth_job_t *j, int result)
{
    j->state = JS_CALLING;
    if (j->kind == JOB_HASH)
        j->hash_cb(result, result == 0 ? j->hash : NULL, j->ud);
    else if (j->kind == JOB_VERIFY)
        j->verify_cb(result, j->ud);
}

static void after_work(uv_work_t *w, int status);

static void start(core_auth_hasher_t *h, core_auth_job_t *j)
{
    j->state = JS_RUNNING;
    list_push(&h->running, j);
    int rc = uv_queue_work(h->loop, &j->work, job_work, after_work);
    /* uv_queue_work fails only without a work callback. */
    assert(rc == 0);
    (void)rc;
}

static void start_waiting(core_auth_hasher_t *h)
{
    while (!h->closing && h->waiting.head && (int)h->running.n < h->max_concurrent) {
        core_auth_job_t *j = h->waiting.head;
        list_remove(&h->waiting, j);
        start(h, j);
    }
}

static void after_work(uv_work_t *w, int status)
{
    core_auth_job_t *j = CORE_CONTAINER_OF(w, core_auth_job_t, work);
    core_auth_hasher_t *h = j->h;
    list_remove(&h->running, j);
    if (status != 0)
        j->result = status;
    if (status == 0 && j->kind == JOB_HASH && j->result == 0)
        core_metrics_add(m_hashes, 1);
    else if (status == 0 && j->kind == JOB_VERIFY)
        core_metrics_add(j->result == 0 ? m_verify_ok : m_verify_failed, 1);
    /* Refill the pool before the callback, which may take its time. */
    start_waiting(h);
    if (!j->cancelled)
        call_back(j, j->result);
    free_job(j);
    if (h->closing)
        maybe_release(h);
}

static void on_closed(uv_handle_t *handle)
{
    core_auth_hasher_t *h = CORE_CONTAINER_OF(handle, core_auth_hasher_t, closer);
    h->closed = true;
    maybe_release(h);
}

static int submit(core_auth_hasher_t *h, core_auth_job_t *j)
{
    if ((int)h->running.n < h->max_concurrent) {
        start(h, j);
        return 0;
    }
    if (h->waiting.n >= h->max_queued) {
        core_metrics_add(m_rejected, 1);
        free_job(j);
        return UV_EBUSY;
    }
    j->state = JS_WAITING;
    list_push(&h->waiting, j);
    return 0;
}

static core_auth_job_t *job_new(core_auth_hasher_t *h, job_kind_t kind, const char *pw, size_t len)
{
    /* Not core_xcalloc: the password buffer needs no zeroing beyond its length. */
    core_auth_job_t *j = core_xmalloc(sizeof *j);
    memset(j, 0, offsetof(core_auth_job_t, pw));
    j->h = h;
    j->kind = kind;
    if (len)
        memcpy(j->pw, pw, len);
    j->pwlen = len;
    return j;
}

core_auth_hasher_t *core_auth_hasher_new(uv_loop_t *loop, int max_concurrent, int max_queued)
{
    core_auth_metrics_init();
    core_auth_hasher_t *h = core_xcalloc(1, sizeof *h);
    h->loop = loop;
    h->max_concurrent = max_concurrent < 1 ? 1 : max_concurrent;
    h->max_queued = max_queued < 0 ? 0 : (size_t)max_queued;
    uv_idle_init(loop, &h->closer);
    /* Computing the dummy hash here, on the pool, keeps the first login of an
     * unknown user from paying for it twice. */
    if (!atomic_load(&dummy_ready)) {
        core_auth_job_t *j = job_new(h, JOB_WARMUP, NULL, 0);
        start(h, j);
    }
    return h;
}

int core_auth_hash_password(core_auth_hasher_t *h, const char *pw, size_t len, core_auth_hash_cb cb,
                            void *ud, core_auth_job_t **out)
{
    if (out)
        *out = NULL;
    if (h->closing)
        return UV_ECANCELED;
    if (!cb || (!pw && len) || len > CORE_AUTH_PW_MAX)
        return UV_EINVAL;
    core_auth_job_t *j = job_new(h, JOB_HASH, pw, len);
    j->hash_cb = cb;
    j->ud = ud;
    int rc = submit(h, j);
    if (out)
        *out = rc == 0 ? j : NULL;
    return rc;
}

int core_auth_verify_password(core_auth_hasher_t *h, const char *stored_hash, const char *pw,
                              size_t len, core_auth_verify_cb cb, void *ud, core_auth_job_t **out)
{
    if (out)
        *out = NULL;
    if (h->closing)
        return UV_ECANCELED;
    if (!cb || (!pw && len) || len > CORE_AUTH_PW_MAX)
        return UV_EINVAL;
    size_t slen = 0;
    if (stored_hash) {
        static const char alg[] = "$argon2id$";
        slen = strnlen(stored_hash, crypto_pwhash_STRBYTES);
        if (slen == crypto_pwhash_STRBYTES || strncmp(stored_hash, alg, sizeof alg - 1) != 0)
            return UV_EINVAL;
    }
    core_auth_job_t *j = job_new(h, JOB_VERIFY, pw, len);
    j->verify_cb = cb;
    j->ud = ud;
    j->dummy = stored_hash == NULL;
    if (stored_hash)
        memcpy(j->hash, stored_hash, slen + 1);
    int rc = submit(h, j);
    if (out)
        *out = rc == 0 ? j : NULL;
    return rc;
}

void core_auth_job_cancel(core_auth_job_t *j)
{
    if (!j || j->cancelled || j->state == JS_CALLING)
        return;
    if (j->state == JS_WAITING) {
        list_remove(&j->h->waiting, j);
        free_job(j);
        return;
    }
    /* Running on the pool: uv_work_t cannot be taken back, so only silence it. */
    j->cancelled = true;
}

size_t core_auth_hasher_pending(const core_auth_hasher_t *h)
{
    return h->waiting.n + h->running.n;
}

void core_auth_hasher_set_probe(core_auth_hasher_t *h, void (*probe)(int delta, void *arg),
                                void *arg)
{
    h->probe = probe;
    h->probe_arg = arg;
}

void core_auth_hasher_free(core_auth_hasher_t *h)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    uv_close((uv_handle_t *)&h->closer, on_closed);
    core_auth_job_t *j;
    while ((j = h->waiting.head)) {
        list_remove(&h->waiting, j);
        call_back(j, UV_ECANCELED);
        free_job(j);
    }
    /* Callbacks cannot touch the running list: only after_work edits it. */
    for (j = h->running.head; j; j = j->next) {
        if (j->cancelled || j->state == JS_CALLING)
            continue;
        j->cancelled = true;
        call_back(j, UV_ECANCELED);
        j->state = JS_RUNNING;
    }
}

int core_auth_request_token(const core_http_req_t *req, char *out, size_t cap)
{
    size_t len = 0;
    const char *h = core_http_header(req, "authorization", &len);
    if (h && len > 7 && strncasecmp(h, "Bearer ", 7) == 0 && len - 7 < cap) {
        memcpy(out, h + 7, len - 7);
        out[len - 7] = '\0';
        return (int)(len - 7);
    }
    const char *p = core_http_header(req, "sec-websocket-protocol", &len);
    const char *end = p ? p + len : NULL;
    while (p && p < end) {
        while (p < end && (*p == ' ' || *p == ','))
            p++;
        size_t n = 0;
        while (p + n < end && p[n] != ',' && p[n] != ' ')
            n++;
        if (n > 7 && strncmp(p, "bearer.", 7) == 0 && n - 7 < cap) {
            memcpy(out, p + 7, n - 7);
            out[n - 7] = '\0';
            return (int)(n - 7);
        }
        p += n;
    }
    int n = core_http_query(req, "access_token", out, cap);
    return n > 0 ? n : UV_ENOENT;
}
