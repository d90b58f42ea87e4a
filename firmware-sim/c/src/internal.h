/* Internal to the library: the bounded output writer and the text encodings
 * JSON needs (hex, base64, decimal). Not part of the public API. */
#ifndef SEALGATE_INTERNAL_H
#define SEALGATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* A cursor over a caller's buffer. Writes past the capacity are dropped and
 * remembered, so no length mistake can ever overrun the buffer. */
typedef struct {
    uint8_t *p;
    size_t cap;
    size_t len;
    int overflow;
} sg_writer;

void sg_writer_init(sg_writer *w, uint8_t *p, size_t cap);
void sg_put(sg_writer *w, const void *data, size_t n);
void sg_put_str(sg_writer *w, const char *s);
void sg_put_be(sg_writer *w, uint64_t v, unsigned bytes);
/* Lower-case hex of data, 2 * n characters. */
void sg_put_hex(sg_writer *w, const uint8_t *data, size_t n);
/* Decimal digits of v, no sign, no leading zeros. */
void sg_put_dec(sg_writer *w, uint64_t v);
size_t sg_dec_len(uint64_t v);

/* Standard padded base64 (RFC 4648 section 4), fed in pieces. */
typedef struct {
    uint8_t carry[3];
    unsigned n;
} sg_b64;

void sg_b64_init(sg_b64 *b);
void sg_b64_put(sg_b64 *b, sg_writer *w, const uint8_t *data, size_t n);
void sg_b64_finish(sg_b64 *b, sg_writer *w);
/* Encoded length of n bytes; callers bound n so that it fits. */
size_t sg_b64_len(size_t n);

/* Whether dev looks like a context sg_device_init filled (sealgate.h must
 * be included first). */
#ifdef SEALGATE_H
int sg_device_ok(const sg_device *dev);
#endif

#endif
