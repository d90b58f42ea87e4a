/*
 * sealgate: seal telemetry on a device for the sealgate gateway
 * (SEALED-ENVELOPE-v1: keys, MAC, JSON and binary encodings, the MQTT
 * connect password, and a nonce counter that survives reboots).
 *
 * Portable C99. mbedTLS is the only dependency. The library never allocates:
 * every output goes into a buffer the caller provides, with its capacity.
 */
#ifndef SEALGATE_H
#define SEALGATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SG_SECRET_LEN 32
#define SG_IV_LEN 16
#define SG_MAC_LEN 32
#define SG_MAX_DEVICE_ID_LEN 64
#define SG_MAX_STREAM_LEN 200
/* "v1:" + 20 digits + ":" + 64 hex digits + NUL */
#define SG_CONNECT_PASSWORD_SIZE 89

typedef enum {
    SG_OK = 0,
    /* A NULL pointer, a device id that does not normalise, kid 0, nonce 0,
     * a stream over 200 bytes, an unknown encoding, K = 0 ... */
    SG_ERR_BAD_ARG = -1,
    /* The output buffer is smaller than the result; nothing useful was
     * written and *out_len is 0. */
    SG_ERR_BUFFER_TOO_SMALL = -2,
    /* The caller's random function reported a failure; nothing was sealed. */
    SG_ERR_RNG = -3,
    /* mbedTLS refused (for example its HMAC context could not be set up). */
    SG_ERR_CRYPTO = -4,
    /* The reservation load or store callback failed; no nonce was given out. */
    SG_ERR_STORE = -5,
    /* The nonce counter would pass 2^64-1: the device must be re-keyed. */
    SG_ERR_EXHAUSTED = -6,
    /* sg_nonce_next on a counter whose sg_nonce_begin did not succeed. */
    SG_ERR_NOT_READY = -7
} sg_status;

/* A short stable name for a status ("buffer_too_small"), for logs. */
const char *sg_status_name(sg_status status);

/* ---- device ----------------------------------------------------------- */

/* The keys a device derives from its secret S (spec section 3), and the
 * normalised device id they are bound to. Fill it with sg_device_init; wipe
 * it with sg_device_wipe when it is no longer needed. */
typedef struct {
    char device_id[SG_MAX_DEVICE_ID_LEN + 1]; /* normalised, NUL-terminated */
    uint8_t device_id_len;
    uint32_t kid;
    uint8_t k_mac[32];
    uint8_t k_enc[16];
    uint8_t k_auth[32];
} sg_device;

/* Normalises device_id (trims ASCII white space, lower-cases ASCII, checks
 * [a-z0-9][a-z0-9._:-]{0,63}) and derives K_mac, K_enc and K_auth from the
 * 32-byte device secret of key version kid (>= 1). */
sg_status sg_device_init(sg_device *dev, const char *device_id, uint32_t kid,
                         const uint8_t secret[SG_SECRET_LEN]);

/* Overwrites the keys so they do not linger in RAM. */
void sg_device_wipe(sg_device *dev);

/* Writes the MQTT CONNECT password "v1:{expiry}:{hex tag}" (spec section 9)
 * as a NUL-terminated string. expiry is Unix seconds, 0 for never.
 * SG_CONNECT_PASSWORD_SIZE bytes always suffice. *out_len excludes the NUL. */
sg_status sg_connect_password(const sg_device *dev, uint64_t expiry, char *out,
                              size_t out_cap, size_t *out_len);

/* ---- sealing ---------------------------------------------------------- */

typedef enum { SG_ENCODING_JSON = 0, SG_ENCODING_BINARY = 1 } sg_encoding;

/* Fills buf with len random bytes; returns 0 on success, anything else on
 * failure. On an ESP32, esp_fill_random() behind a wrapper. */
typedef int (*sg_random_fn)(void *ctx, uint8_t *buf, size_t len);

typedef struct {
    const char *stream;  /* topic levels after the device id; "" for none */
    uint64_t nonce;      /* >= 1, from sg_nonce_next */
    const uint8_t *body; /* may be NULL when body_len is 0 */
    size_t body_len;
    sg_encoding encoding;
    int encrypt;         /* nonzero: AES-128-CBC with a fresh random IV */
} sg_message;

/* The exact number of bytes sg_seal writes for msg, or 0 when msg is invalid
 * (or the size does not fit in size_t). */
size_t sg_sealed_len(const sg_device *dev, const sg_message *msg);

/* Seals msg into out (not NUL-terminated): the MQTT payload to publish on
 * "sealed/{device_id}[/{stream}]". When msg->encrypt is set, random is asked
 * for the 16-byte IV, only after every argument and the capacity were
 * checked. On any error *out_len is 0. */
sg_status sg_seal(const sg_device *dev, const sg_message *msg,
                  sg_random_fn random, void *random_ctx, uint8_t *out,
                  size_t out_cap, size_t *out_len);

/* ---- nonce counter with flash reservation (spec section 6) ------------ */

/* Reads the stored reservation into *value. Returns SG_STORE_OK,
 * SG_STORE_EMPTY when nothing was ever stored (fresh flash), or anything
 * else on failure. */
typedef int (*sg_load_fn)(void *ctx, uint64_t *value);
/* Stores value durably (it must survive a power cut once this returns 0)
 * and atomically (a cut during the write leaves the old or the new value).
 * Returns 0 on success. */
typedef int (*sg_store_fn)(void *ctx, uint64_t value);

#define SG_STORE_OK 0
#define SG_STORE_EMPTY 1

typedef struct {
    uint64_t next;     /* the nonce sg_nonce_next hands out next */
    uint64_t reserved; /* the value in flash: a reboot counts from here + K */
    uint64_t step;     /* K */
    sg_store_fn store;
    void *ctx;
    int ready;
} sg_nonce_counter;

/* At boot: reads R, stores R + K, and counts from R + K. Call once per boot
 * before the first sg_nonce_next; it may be called again after a failure. */
sg_status sg_nonce_begin(sg_nonce_counter *c, uint64_t k, sg_load_fn load,
                         sg_store_fn store, void *ctx);

/* Hands out the next nonce. Before it passes the reserved range it stores
 * the next reservation; if that store fails, no nonce is given out and the
 * next call tries again. */
sg_status sg_nonce_next(sg_nonce_counter *c, uint64_t *nonce);

#ifdef __cplusplus
}
#endif

#endif /* SEALGATE_H */
