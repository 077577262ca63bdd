/* res_keys.h: encryption at rest for message bodies, and the keyed blind
 * index that lets encrypted bodies be searched (docs/encryption.md).
 *
 * Keys:
 *   master key (MK)  one per region, 32 bytes read from a key file; only
 *                    ever wraps data keys. Its id is the hex of the first 8
 *                    bytes of BLAKE2b-256(MK): safe to store and log.
 *   data key (DK)    32 random bytes per workspace and region, stored wrapped
 *                    by the MK: nonce(24) || XChaCha20-Poly1305-IETF(DK) ||
 *                    tag(16), associated data "meridian-dk:v1:<region>:<ws>",
 *                    so a wrapped key copied to another workspace or region
 *                    does not unwrap there.
 *   index key        crypto_kdf subkey 1 of the DK, context "mrdnidx1": the
 *                    blind index's key. Destroying the DK destroys it too.
 *
 * A body is "e1." + base64url-no-padding(nonce(24) || ciphertext || tag(16)),
 * XChaCha20-Poly1305-IETF under the DK with the message id as associated
 * data (a body moved to another message does not decrypt). A plaintext body
 * that itself starts with "e1." or "e0." is stored as "e0." + body (see
 * res_keys_plain). Anything else is plaintext (encryption off, or rows from
 * before) and passes through decryption unchanged; "" (a tombstone) stays "".
 *
 * Pure functions on libsodium (core_init must have run): no I/O except
 * reading key files, no logging. Functions return 0 or a negative error. */
#ifndef RES_KEYS_H
#define RES_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define RES_KEYS_KEY_BYTES 32
#define RES_KEYS_ID_LEN 16                                    /* hex characters of a key id */
#define RES_KEYS_WRAPPED_BYTES (24 + RES_KEYS_KEY_BYTES + 16) /* nonce || ct || tag */
#define RES_KEYS_TERM_BYTES 16                                /* one blind index entry */
#define RES_KEYS_MAX_TERMS 256                                /* per message (or query) */
#define RES_KEYS_TERM_MAX_LEN 64                              /* bytes; longer terms are cut */
#define RES_KEYS_BODY_PREFIX "e1."

/* Errors. */
#define RES_KEYS_EKEYFILE (-1001) /* unreadable, malformed or unsafe key file */
#define RES_KEYS_EAUTH (-1002)    /* authentication failed: wrong key, AD, or tampered */
#define RES_KEYS_EFORMAT (-1003)  /* not a well-formed wrapped key or "e1." body */
#define RES_KEYS_EINVAL (-1004)   /* bad arguments */

/* A master key: the key bytes live in sodium_malloc'd, mlocked memory
 * (guard pages, never swapped, wiped on free). */
typedef struct {
    uint8_t *key;                 /* RES_KEYS_KEY_BYTES, or NULL when empty */
    char id[RES_KEYS_ID_LEN + 1]; /* hex of BLAKE2b(key)[0..8) */
} res_keys_master_t;

/* Reads a key file: exactly 64 hex characters and an optional newline, a
 * regular file with no group or other permission bits (mode & 077 == 0).
 * On error returns RES_KEYS_EKEYFILE with the reason, naming the file, in
 * err; m is left empty. */
int res_keys_master_load(res_keys_master_t *m, const char *path, char *err, size_t errlen);
/* The same from 32 bytes (tests, tools). */
void res_keys_master_from_bytes(res_keys_master_t *m, const uint8_t key[RES_KEYS_KEY_BYTES]);
/* Wipes and frees the key; m is empty afterwards. Safe on an empty one. */
void res_keys_master_free(res_keys_master_t *m);

/* The id of a key: hex of the first 8 bytes of BLAKE2b-256(key). */
void res_keys_key_id(const uint8_t key[RES_KEYS_KEY_BYTES], char out[RES_KEYS_ID_LEN + 1]);

/* Fills dk with 32 random bytes: a new data key. */
void res_keys_dk_new(uint8_t dk[RES_KEYS_KEY_BYTES]);

/* Wraps dk for workspace ws of region under m into out (a fresh random
 * nonce each time). Returns 0 or RES_KEYS_EINVAL. */
int res_keys_wrap(const res_keys_master_t *m, const char *ws, const char *region,
                  const uint8_t dk[RES_KEYS_KEY_BYTES], uint8_t out[RES_KEYS_WRAPPED_BYTES]);
/* Unwraps: RES_KEYS_EFORMAT for a wrong length, RES_KEYS_EAUTH when m, ws or
 * region is not the one it was wrapped with (or the bytes were altered);
 * dk is zeroed on any error. */
int res_keys_unwrap(const res_keys_master_t *m, const char *ws, const char *region,
                    const uint8_t *wrapped, size_t len, uint8_t dk[RES_KEYS_KEY_BYTES]);

/* The blind index key of a data key. */
void res_keys_index_key(const uint8_t dk[RES_KEYS_KEY_BYTES], uint8_t idx[RES_KEYS_KEY_BYTES]);

/* True when body is an encrypted body ("e1." prefix). */
bool res_keys_is_encrypted(const char *body, size_t len);
/* The stored form of a plaintext body (encryption off): body itself, or
 * "e0." + body when body starts like a stored form ("e0." or "e1."), so that
 * it reads back exactly as written. Replaces out's content; returns the
 * NUL-terminated result, which is body itself when no escape is needed. */
const char *res_keys_plain(const char *body, size_t len, core_buf_t *out);
/* Length of the "e1." text for a plaintext of len bytes. */
size_t res_keys_encrypted_len(size_t len);
/* Replaces out's content with the "e1." text of plain (NUL-terminated
 * through core_buf_cstr). The AD is msg_id. "" stays "" (tombstones). */
void res_keys_encrypt(const uint8_t dk[RES_KEYS_KEY_BYTES], const char *msg_id, const char *plain,
                      size_t len, core_buf_t *out);
/* Replaces out's content with the plaintext of text. Text that is not
 * encrypted is copied as is ("e0." escapes removed). Returns 0, RES_KEYS_EFORMAT (bad base64 or too
 * short) or RES_KEYS_EAUTH (wrong key or message id, or tampered); out is
 * empty on error. dk may be NULL when the caller knows text is plaintext;
 * an encrypted text with dk NULL is RES_KEYS_EAUTH. */
int res_keys_decrypt(const uint8_t *dk, const char *msg_id, const char *text, size_t len,
                     core_buf_t *out);

/* The blind index of a text: splits it into terms (maximal runs of ASCII
 * letters and digits and of bytes >= 0x80, so UTF-8 letters of any script
 * stay in their words), lower-cases ASCII, drops terms shorter than 2 bytes,
 * cuts terms at 64 bytes (at a character boundary), removes duplicates and
 * keeps the first RES_KEYS_MAX_TERMS (and at most max), each hashed with
 * keyed BLAKE2b (16 bytes) under idx. Returns the number written to out. */
size_t res_keys_terms(const uint8_t idx[RES_KEYS_KEY_BYTES], const char *text, size_t len,
                      uint8_t (*out)[RES_KEYS_TERM_BYTES], size_t max);
/* Appends a Postgres bytea[] literal of the n hashes: {"\\x0a1b...","\\x..."}
 * ("{}" for none). The same text serves the stored column and the query. */
void res_keys_terms_literal(core_buf_t *b, const uint8_t (*terms)[RES_KEYS_TERM_BYTES], size_t n);

#endif
