/* res_keys.c: data keys, body encryption and the blind index (res_keys.h). */
#include "residency/res_keys.h"
#include "core/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define PREFIX_LEN (sizeof RES_KEYS_BODY_PREFIX - 1)
#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING

_Static_assert(NONCE_BYTES == 24, "XChaCha20 nonce");
_Static_assert(TAG_BYTES == 16, "Poly1305 tag");
_Static_assert(RES_KEYS_WRAPPED_BYTES == NONCE_BYTES + RES_KEYS_KEY_BYTES + TAG_BYTES, "layout");

/* ---- master keys ---- */

static void master_set(res_keys_master_t *m, const uint8_t key[RES_KEYS_KEY_BYTES])
{
    m->key = sodium_malloc(RES_KEYS_KEY_BYTES);
    if (!m->key)
        abort(); /* out of memory (or of locked memory) aborts, as everywhere */
    memcpy(m->key, key, RES_KEYS_KEY_BYTES);
    sodium_mprotect_readonly(m->key);
    res_keys_key_id(key, m->id);
}

int res_keys_master_load(res_keys_master_t *m, const char *path, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: cannot open key file: %s", path, strerror(errno));
        return RES_KEYS_EKEYFILE;
    }
    /* Whoever else can read the master key reads every workspace's data
     * key; execute bits are refused too: the file is then not what we wrote. */
    if (S_ISREG(st.st_mode) && (st.st_mode & 077)) {
        snprintf(err, errlen,
                 "%s: key file has group or other permissions (mode %04o); chmod 600 it", path,
                 (unsigned)(st.st_mode & 07777));
        return RES_KEYS_EKEYFILE;
    }
    uint8_t key[RES_KEYS_KEY_BYTES];
    if (core_auth_key_file_read(path, key, err, errlen) != 0)
        return RES_KEYS_EKEYFILE;
    master_set(m, key);
    sodium_memzero(key, sizeof key);
    return 0;
}

void res_keys_master_from_bytes(res_keys_master_t *m, const uint8_t key[RES_KEYS_KEY_BYTES])
{
    memset(m, 0, sizeof *m);
    master_set(m, key);
}

void res_keys_master_free(res_keys_master_t *m)
{
    if (m->key)
        sodium_free(m->key); /* wipes before unmapping */
    memset(m, 0, sizeof *m);
}

void res_keys_key_id(const uint8_t key[RES_KEYS_KEY_BYTES], char out[RES_KEYS_ID_LEN + 1])
{
    uint8_t h[32];
    crypto_generichash(h, sizeof h, key, RES_KEYS_KEY_BYTES, NULL, 0);
    sodium_bin2hex(out, RES_KEYS_ID_LEN + 1, h, RES_KEYS_ID_LEN / 2);
}

/* ---- data keys ---- */

void res_keys_dk_new(uint8_t dk[RES_KEYS_KEY_BYTES])
{
    randombytes_buf(dk, RES_KEYS_KEY_BYTES);
}

/* "meridian-dk:v1:<region>:<ws>"; false when it does not fit. */
static bool dk_ad(char *ad, size_t cap, const char *ws, const char *region, size_t *len)
{
    if (!ws || !region || !*ws || !*region)
        return false;
    int n = snprintf(ad, cap, "meridian-dk:v1:%s:%s", region, ws);
    if (n < 0 || (size_t)n >= cap)
        return false;
    *len = (size_t)n;
    return true;
}

int res_keys_wrap(const res_keys_master_t *m, const char *ws, const char *region,
                  const uint8_t dk[RES_KEYS_KEY_BYTES], uint8_t out[RES_KEYS_WRAPPED_BYTES])
{
    char ad[256];
    size_t adlen;
    if (!m || !m->key || !dk_ad(ad, sizeof ad, ws, region, &adlen))
        return RES_KEYS_EINVAL;
    randombytes_buf(out, NONCE_BYTES);
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + NONCE_BYTES, &clen, dk, RES_KEYS_KEY_BYTES,
                                               (const uint8_t *)ad, adlen, NULL, out, m->key);
    return 0;
}

int res_keys_unwrap(const res_keys_master_t *m, const char *ws, const char *region,
                    const uint8_t *wrapped, size_t len, uint8_t dk[RES_KEYS_KEY_BYTES])
{
    sodium_memzero(dk, RES_KEYS_KEY_BYTES);
    char ad[256];
    size_t adlen;
    if (!m || !m->key || !wrapped || !dk_ad(ad, sizeof ad, ws, region, &adlen))
        return RES_KEYS_EINVAL;
    if (len != RES_KEYS_WRAPPED_BYTES)
        return RES_KEYS_EFORMAT;
    unsigned long long dlen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(dk, &dlen, NULL, wrapped + NONCE_BYTES,
                                                   len - NONCE_BYTES, (const uint8_t *)ad, adlen,
                                                   wrapped, m->key) != 0) {
        sodium_memzero(dk, RES_KEYS_KEY_BYTES);
        return RES_KEYS_EAUTH;
    }
    return 0;
}

void res_keys_index_key(const uint8_t dk[RES_KEYS_KEY_BYTES], uint8_t idx[RES_KEYS_KEY_BYTES])
{
    crypto_kdf_derive_from_key(idx, RES_KEYS_KEY_BYTES, 1, "mrdnidx1", dk);
}

/* ---- bodies ---- */

bool res_keys_is_encrypted(const char *body, size_t len)
{
    return len >= PREFIX_LEN && memcmp(body, RES_KEYS_BODY_PREFIX, PREFIX_LEN) == 0;
}

#define ESCAPE "e0."

static bool escaped(const char *body, size_t len)
{
    return len >= PREFIX_LEN && memcmp(body, ESCAPE, PREFIX_LEN) == 0;
}

const char *res_keys_plain(const char *body, size_t len, core_buf_t *out)
{
    core_buf_reset(out);
    if (!res_keys_is_encrypted(body, len) && !escaped(body, len))
        return body;
    core_buf_puts(out, ESCAPE);
    core_buf_append(out, body, len);
    return core_buf_cstr(out);
}

size_t res_keys_encrypted_len(size_t len)
{
    return PREFIX_LEN + sodium_base64_ENCODED_LEN(NONCE_BYTES + len + TAG_BYTES, B64) - 1;
}

void res_keys_encrypt(const uint8_t dk[RES_KEYS_KEY_BYTES], const char *msg_id, const char *plain,
                      size_t len, core_buf_t *out)
{
    core_buf_reset(out);
    if (len == 0) {
        core_buf_cstr(out);
        return;
    }
    /* The binary form goes at the end of out's storage and is encoded into
     * its front: one buffer, reused by the caller, no allocation per call. */
    size_t bin = NONCE_BYTES + len + TAG_BYTES;
    size_t text = sodium_base64_ENCODED_LEN(bin, B64); /* with its NUL */
    core_buf_reserve(out, PREFIX_LEN + text + bin);
    uint8_t *raw = (uint8_t *)out->base + PREFIX_LEN + text;
    randombytes_buf(raw, NONCE_BYTES);
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(raw + NONCE_BYTES, &clen, (const uint8_t *)plain,
                                               len, (const uint8_t *)msg_id, strlen(msg_id), NULL,
                                               raw, dk);
    memcpy(out->base, RES_KEYS_BODY_PREFIX, PREFIX_LEN);
    sodium_bin2base64(out->base + PREFIX_LEN, text, raw, bin, B64);
    out->len = PREFIX_LEN + text - 1;
    sodium_memzero(raw, bin); /* the tail held nothing secret but keep it clean */
}

int res_keys_decrypt(const uint8_t *dk, const char *msg_id, const char *text, size_t len,
                     core_buf_t *out)
{
    core_buf_reset(out);
    if (!res_keys_is_encrypted(text, len)) {
        if (escaped(text, len)) {
            text += PREFIX_LEN;
            len -= PREFIX_LEN;
        }
        core_buf_append(out, text, len);
        core_buf_cstr(out);
        return 0;
    }
    if (!dk)
        return RES_KEYS_EAUTH;
    const char *b64 = text + PREFIX_LEN;
    size_t b64len = len - PREFIX_LEN;
    size_t maxbin = b64len / 4 * 3 + 3;
    if (maxbin < NONCE_BYTES + TAG_BYTES)
        return RES_KEYS_EFORMAT;
    /* Binary at the end of the storage, plaintext decrypted into its front. */
    core_buf_reserve(out, maxbin + maxbin + 1);
    uint8_t *raw = (uint8_t *)out->base + maxbin + 1;
    size_t bin;
    if (sodium_base642bin(raw, maxbin, b64, b64len, NULL, &bin, NULL, B64) != 0 ||
        bin < NONCE_BYTES + TAG_BYTES)
        return RES_KEYS_EFORMAT;
    unsigned long long plen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            (uint8_t *)out->base, &plen, NULL, raw + NONCE_BYTES, bin - NONCE_BYTES,
            (const uint8_t *)msg_id, msg_id ? strlen(msg_id) : 0, raw, dk) != 0) {
        out->len = 0;
        return RES_KEYS_EAUTH;
    }
    out->len = (size_t)plen;
    core_buf_cstr(out);
    return 0;
}

/* ---- the blind index ---- */

static bool term_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

/* A set of the hashes seen so far (open addressing on their first bytes):
 * a 40,000-character message has thousands of words, and a linear scan per
 * word over the kept terms would cost milliseconds. */
#define SEEN_SLOTS 1024 /* a power of two, > 2 * RES_KEYS_MAX_TERMS */

size_t res_keys_terms(const uint8_t idx[RES_KEYS_KEY_BYTES], const char *text, size_t len,
                      uint8_t (*out)[RES_KEYS_TERM_BYTES], size_t max)
{
    if (max > RES_KEYS_MAX_TERMS)
        max = RES_KEYS_MAX_TERMS;
    int16_t seen[SEEN_SLOTS];
    memset(seen, 0xff, sizeof seen); /* -1: empty */
    size_t n = 0;
    uint8_t term[RES_KEYS_TERM_MAX_LEN];
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len && n < max) {
        while (i < len && !term_byte(s[i]))
            i++;
        size_t start = i;
        while (i < len && term_byte(s[i]))
            i++;
        size_t tlen = i - start;
        if (tlen > RES_KEYS_TERM_MAX_LEN) {
            tlen = RES_KEYS_TERM_MAX_LEN;
            /* Cut before a UTF-8 continuation byte, not inside a character. */
            while (tlen > 0 && (s[start + tlen] & 0xC0) == 0x80)
                tlen--;
        }
        if (tlen < 2)
            continue;
        for (size_t k = 0; k < tlen; k++) {
            unsigned char c = s[start + k];
            term[k] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c - 'A' + 'a') : c;
        }
        crypto_generichash(out[n], RES_KEYS_TERM_BYTES, term, tlen, idx, RES_KEYS_KEY_BYTES);
        uint32_t h;
        memcpy(&h, out[n], sizeof h);
        size_t slot = h & (SEEN_SLOTS - 1);
        bool dup = false;
        while (seen[slot] >= 0) {
            if (memcmp(out[seen[slot]], out[n], RES_KEYS_TERM_BYTES) == 0) {
                dup = true;
                break;
            }
            slot = (slot + 1) & (SEEN_SLOTS - 1);
        }
        if (dup)
            continue;
        seen[slot] = (int16_t)n;
        n++;
    }
    sodium_memzero(term, sizeof term);
    return n;
}

void res_keys_terms_literal(core_buf_t *b, const uint8_t (*terms)[RES_KEYS_TERM_BYTES], size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* "\\x" + 32 hex + quotes + comma per term. */
    core_buf_reserve(b, 2 + n * (2 * RES_KEYS_TERM_BYTES + 7));
    core_buf_putc(b, '{');
    for (size_t i = 0; i < n; i++) {
        char e[2 * RES_KEYS_TERM_BYTES + 8];
        size_t k = 0;
        if (i)
            e[k++] = ',';
        e[k++] = '"';
        e[k++] = '\\';
        e[k++] = '\\';
        e[k++] = 'x';
        for (size_t j = 0; j < RES_KEYS_TERM_BYTES; j++) {
            e[k++] = hex[terms[i][j] >> 4];
            e[k++] = hex[terms[i][j] & 15];
        }
        e[k++] = '"';
        core_buf_append(b, e, k);
    }
    core_buf_putc(b, '}');
}
