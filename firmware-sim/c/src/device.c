/* The device context: id normalisation, key derivation (spec sections 1
 * and 3) and the MQTT connect password (section 9). */
#include "sealgate.h"
#include "internal.h"

#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

const char *sg_status_name(sg_status status)
{
    switch (status) {
    case SG_OK:
        return "ok";
    case SG_ERR_BAD_ARG:
        return "bad_arg";
    case SG_ERR_BUFFER_TOO_SMALL:
        return "buffer_too_small";
    case SG_ERR_RNG:
        return "rng_failed";
    case SG_ERR_CRYPTO:
        return "crypto_failed";
    case SG_ERR_STORE:
        return "store_failed";
    case SG_ERR_EXHAUSTED:
        return "nonce_exhausted";
    case SG_ERR_NOT_READY:
        return "not_ready";
    }
    return "unknown";
}

/* The same set as Rust's u8::is_ascii_whitespace, which the gateway trims. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

static int id_char_ok(char c, int first)
{
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
        return 1;
    }
    return !first && (c == '.' || c == ':' || c == '_' || c == '-');
}

/* Writes the normalised id into out (SG_MAX_DEVICE_ID_LEN + 1 bytes);
 * returns its length, or 0 when the id is invalid. */
static size_t normalise_id(const char *raw, char *out)
{
    size_t start = 0;
    size_t end = strlen(raw);
    size_t i;
    while (start < end && is_space(raw[start])) {
        start++;
    }
    while (end > start && is_space(raw[end - 1])) {
        end--;
    }
    if (end == start || end - start > SG_MAX_DEVICE_ID_LEN) {
        return 0;
    }
    for (i = 0; i < end - start; i++) {
        char c = raw[start + i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (!id_char_ok(c, i == 0)) {
            return 0;
        }
        out[i] = c;
    }
    out[i] = '\0';
    return i;
}

static int hmac(const uint8_t *key, size_t key_len, const uint8_t *in,
                size_t in_len, uint8_t out[32])
{
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (info == NULL) {
        return -1;
    }
    return mbedtls_md_hmac(info, key, key_len, in, in_len, out);
}

static int derive(const uint8_t *secret, const char *label, uint8_t out[32])
{
    return hmac(secret, SG_SECRET_LEN, (const uint8_t *)label, strlen(label), out);
}

sg_status sg_device_init(sg_device *dev, const char *device_id, uint32_t kid,
                         const uint8_t secret[SG_SECRET_LEN])
{
    uint8_t enc[32];
    size_t len;
    int rc;
    if (dev == NULL) {
        return SG_ERR_BAD_ARG;
    }
    memset(dev, 0, sizeof *dev);
    if (device_id == NULL || secret == NULL || kid == 0) {
        return SG_ERR_BAD_ARG;
    }
    len = normalise_id(device_id, dev->device_id);
    if (len == 0) {
        return SG_ERR_BAD_ARG;
    }
    dev->device_id_len = (uint8_t)len;
    dev->kid = kid;
    rc = derive(secret, "sealgate/v1/mac", dev->k_mac);
    rc = rc != 0 ? rc : derive(secret, "sealgate/v1/enc", enc);
    rc = rc != 0 ? rc : derive(secret, "sealgate/v1/auth", dev->k_auth);
    memcpy(dev->k_enc, enc, sizeof dev->k_enc);
    mbedtls_platform_zeroize(enc, sizeof enc);
    if (rc != 0) {
        sg_device_wipe(dev);
        return SG_ERR_CRYPTO;
    }
    return SG_OK;
}

void sg_device_wipe(sg_device *dev)
{
    if (dev != NULL) {
        mbedtls_platform_zeroize(dev, sizeof *dev);
    }
}

/* A context sg_device_init filled, as far as can be told from its fields. */
int sg_device_ok(const sg_device *dev)
{
    return dev != NULL && dev->kid != 0 && dev->device_id_len != 0 &&
           dev->device_id_len <= SG_MAX_DEVICE_ID_LEN &&
           dev->device_id[dev->device_id_len] == '\0';
}

sg_status sg_connect_password(const sg_device *dev, uint64_t expiry, char *out,
                              size_t out_cap, size_t *out_len)
{
    uint8_t input[SG_MAX_DEVICE_ID_LEN + 1 + 8];
    uint8_t tag[32];
    size_t len;
    sg_writer in;
    sg_writer w;
    if (out_len != NULL) {
        *out_len = 0;
    }
    if (!sg_device_ok(dev) || out == NULL || out_len == NULL) {
        return SG_ERR_BAD_ARG;
    }
    len = 3 + sg_dec_len(expiry) + 1 + 64;
    if (out_cap < len + 1) {
        return SG_ERR_BUFFER_TOO_SMALL;
    }
    sg_writer_init(&in, input, sizeof input);
    sg_put(&in, dev->device_id, dev->device_id_len);
    sg_put(&in, "", 1);
    sg_put_be(&in, expiry, 8);
    if (hmac(dev->k_auth, sizeof dev->k_auth, input, in.len, tag) != 0) {
        return SG_ERR_CRYPTO;
    }
    sg_writer_init(&w, (uint8_t *)out, out_cap);
    sg_put_str(&w, "v1:");
    sg_put_dec(&w, expiry);
    sg_put(&w, ":", 1);
    sg_put_hex(&w, tag, sizeof tag);
    sg_put(&w, "", 1);
    if (w.overflow) {
        return SG_ERR_BUFFER_TOO_SMALL;
    }
    *out_len = w.len - 1;
    return SG_OK;
}
