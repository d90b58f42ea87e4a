/* Sealing a message: the MAC (spec section 4) and both encodings
 * (section 5), written straight into the caller's buffer. */
#include "sealgate.h"
#include "internal.h"

#include <string.h>

#include <mbedtls/aes.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#define BLOCK 16

static const char JSON_HEAD[] = "{\"v\":1,\"kid\":";
static const char JSON_NONCE[] = ",\"nonce\":";
static const char JSON_IV[] = ",\"enc\":\"aes-128-cbc\",\"iv\":\"";
static const char JSON_PAYLOAD[] = "\",\"payload\":\"";
static const char JSON_PAYLOAD_PLAIN[] = ",\"payload\":\"";
static const char JSON_MAC[] = "\",\"mac\":\"";
static const char JSON_TAIL[] = "\"}";
#define LIT(s) (sizeof(s) - 1)

/* Length of a NUL-terminated stream, or SG_MAX_STREAM_LEN + 1 when longer. */
static size_t stream_len(const char *s)
{
    size_t n = 0;
    while (n <= SG_MAX_STREAM_LEN && s[n] != '\0') {
        n++;
    }
    return n;
}

static int message_ok(const sg_device *dev, const sg_message *msg)
{
    return sg_device_ok(dev) && msg != NULL && msg->nonce != 0 &&
           msg->stream != NULL && stream_len(msg->stream) <= SG_MAX_STREAM_LEN &&
           (msg->body != NULL || msg->body_len == 0) &&
           (msg->encoding == SG_ENCODING_JSON || msg->encoding == SG_ENCODING_BINARY) &&
           /* keeps every length below well inside size_t */
           msg->body_len <= ((size_t)-1) / 2 - 1024;
}

static size_t body_out_len(const sg_message *msg)
{
    return msg->encrypt ? (msg->body_len / BLOCK + 1) * BLOCK : msg->body_len;
}

size_t sg_sealed_len(const sg_device *dev, const sg_message *msg)
{
    size_t body;
    if (!message_ok(dev, msg)) {
        return 0;
    }
    body = body_out_len(msg);
    if (msg->encoding == SG_ENCODING_BINARY) {
        return 3 + 1 + 4 + 8 + (msg->encrypt ? SG_IV_LEN : 0) + body + SG_MAC_LEN;
    }
    return LIT(JSON_HEAD) + sg_dec_len(dev->kid) + LIT(JSON_NONCE) +
           sg_dec_len(msg->nonce) +
           (msg->encrypt ? LIT(JSON_IV) + sg_b64_len(SG_IV_LEN) + LIT(JSON_PAYLOAD)
                         : LIT(JSON_PAYLOAD_PLAIN)) +
           sg_b64_len(body) + LIT(JSON_MAC) + 2 * SG_MAC_LEN + LIT(JSON_TAIL);
}

/* Where body bytes go: raw into a binary frame, base64 into JSON. Every
 * byte also goes into the MAC. */
typedef struct {
    sg_writer *w;
    sg_b64 b64;
    int json;
    mbedtls_md_context_t *mac;
    int rc;
} body_sink;

static void sink_put(body_sink *s, const uint8_t *data, size_t n)
{
    if (s->rc == 0) {
        s->rc = mbedtls_md_hmac_update(s->mac, data, n);
    }
    if (s->json) {
        sg_b64_put(&s->b64, s->w, data, n);
    } else {
        sg_put(s->w, data, n);
    }
}

/* AES-128-CBC with PKCS#7 padding, one block at a time so the ciphertext
 * needs no buffer of its own. */
static int encrypt_body(const sg_device *dev, const sg_message *msg,
                        const uint8_t iv_in[SG_IV_LEN], body_sink *s)
{
    mbedtls_aes_context aes;
    uint8_t iv[SG_IV_LEN];
    uint8_t plain[BLOCK];
    uint8_t cipher[BLOCK];
    size_t done = 0;
    int last = 0;
    int rc;
    mbedtls_aes_init(&aes);
    memcpy(iv, iv_in, SG_IV_LEN);
    rc = mbedtls_aes_setkey_enc(&aes, dev->k_enc, 128);
    while (rc == 0 && !last) {
        size_t n = msg->body_len - done;
        if (n >= BLOCK) {
            memcpy(plain, msg->body + done, BLOCK);
            done += BLOCK;
        } else {
            if (n > 0) {
                memcpy(plain, msg->body + done, n);
            }
            memset(plain + n, (int)(BLOCK - n), BLOCK - n);
            last = 1;
        }
        rc = mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_ENCRYPT, BLOCK, iv, plain, cipher);
        if (rc == 0) {
            sink_put(s, cipher, BLOCK);
        }
    }
    mbedtls_platform_zeroize(plain, sizeof plain);
    mbedtls_aes_free(&aes);
    return rc;
}

static void put_header(sg_writer *w, const sg_device *dev, const sg_message *msg,
                       const uint8_t iv[SG_IV_LEN])
{
    if (msg->encoding == SG_ENCODING_BINARY) {
        uint8_t enc = msg->encrypt ? 1 : 0;
        sg_put(w, "SG\x01", 3);
        sg_put(w, &enc, 1);
        sg_put_be(w, dev->kid, 4);
        sg_put_be(w, msg->nonce, 8);
        if (msg->encrypt) {
            sg_put(w, iv, SG_IV_LEN);
        }
        return;
    }
    sg_put_str(w, JSON_HEAD);
    sg_put_dec(w, dev->kid);
    sg_put_str(w, JSON_NONCE);
    sg_put_dec(w, msg->nonce);
    if (msg->encrypt) {
        sg_b64 b;
        sg_b64_init(&b);
        sg_put_str(w, JSON_IV);
        sg_b64_put(&b, w, iv, SG_IV_LEN);
        sg_b64_finish(&b, w);
        sg_put_str(w, JSON_PAYLOAD);
    } else {
        sg_put_str(w, JSON_PAYLOAD_PLAIN);
    }
}

/* mac_input up to the body: "SGv1", id, stream, kid, nonce, enc, iv. Fed
 * in pieces so the stream is never copied onto the stack. */
static int mac_header(mbedtls_md_context_t *mac, const sg_device *dev,
                      const sg_message *msg, const uint8_t iv[SG_IV_LEN])
{
    uint8_t scratch[4 + 8 + 1];
    size_t slen = stream_len(msg->stream);
    sg_writer w;
    int rc;
    sg_writer_init(&w, scratch, sizeof scratch);
    sg_put(&w, "SGv1", 4);
    sg_put_be(&w, dev->device_id_len, 1);
    rc = mbedtls_md_hmac_update(mac, scratch, w.len);
    rc = rc != 0 ? rc : mbedtls_md_hmac_update(mac, (const uint8_t *)dev->device_id, dev->device_id_len);
    sg_writer_init(&w, scratch, sizeof scratch);
    sg_put_be(&w, slen, 2);
    rc = rc != 0 ? rc : mbedtls_md_hmac_update(mac, scratch, w.len);
    rc = rc != 0 ? rc : mbedtls_md_hmac_update(mac, (const uint8_t *)msg->stream, slen);
    sg_writer_init(&w, scratch, sizeof scratch);
    sg_put_be(&w, dev->kid, 4);
    sg_put_be(&w, msg->nonce, 8);
    sg_put_be(&w, msg->encrypt ? 1 : 0, 1);
    rc = rc != 0 ? rc : mbedtls_md_hmac_update(mac, scratch, w.len);
    if (msg->encrypt) {
        rc = rc != 0 ? rc : mbedtls_md_hmac_update(mac, iv, SG_IV_LEN);
    }
    return rc;
}

static int seal_into(const sg_device *dev, const sg_message *msg,
                     const uint8_t iv[SG_IV_LEN], sg_writer *w)
{
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_context_t mac;
    uint8_t tag[SG_MAC_LEN];
    body_sink sink;
    int rc;
    mbedtls_md_init(&mac);
    rc = info == NULL ? -1 : mbedtls_md_setup(&mac, info, 1);
    rc = rc != 0 ? rc : mbedtls_md_hmac_starts(&mac, dev->k_mac, sizeof dev->k_mac);
    rc = rc != 0 ? rc : mac_header(&mac, dev, msg, iv);
    if (rc == 0) {
        put_header(w, dev, msg, iv);
        sink.w = w;
        sink.json = msg->encoding == SG_ENCODING_JSON;
        sink.mac = &mac;
        sink.rc = 0;
        sg_b64_init(&sink.b64);
        if (msg->encrypt) {
            rc = encrypt_body(dev, msg, iv, &sink);
        } else {
            sink_put(&sink, msg->body, msg->body_len);
        }
        rc = rc != 0 ? rc : sink.rc;
    }
    rc = rc != 0 ? rc : mbedtls_md_hmac_finish(&mac, tag);
    mbedtls_md_free(&mac);
    if (rc != 0) {
        return rc;
    }
    if (msg->encoding == SG_ENCODING_BINARY) {
        sg_put(w, tag, sizeof tag);
    } else {
        sg_b64_finish(&sink.b64, w);
        sg_put_str(w, JSON_MAC);
        sg_put_hex(w, tag, sizeof tag);
        sg_put_str(w, JSON_TAIL);
    }
    return 0;
}

sg_status sg_seal(const sg_device *dev, const sg_message *msg,
                  sg_random_fn random, void *random_ctx, uint8_t *out,
                  size_t out_cap, size_t *out_len)
{
    uint8_t iv[SG_IV_LEN] = {0};
    size_t len;
    sg_writer w;
    if (out_len != NULL) {
        *out_len = 0;
    }
    if (out == NULL || out_len == NULL || !message_ok(dev, msg) ||
        (msg->encrypt && random == NULL)) {
        return SG_ERR_BAD_ARG;
    }
    len = sg_sealed_len(dev, msg);
    if (out_cap < len) {
        return SG_ERR_BUFFER_TOO_SMALL;
    }
    if (msg->encrypt && random(random_ctx, iv, sizeof iv) != 0) {
        return SG_ERR_RNG;
    }
    sg_writer_init(&w, out, out_cap);
    if (seal_into(dev, msg, iv, &w) != 0) {
        return SG_ERR_CRYPTO;
    }
    if (w.overflow || w.len != len) {
        return SG_ERR_BUFFER_TOO_SMALL; /* unreachable: len is exact */
    }
    *out_len = len;
    return SG_OK;
}
