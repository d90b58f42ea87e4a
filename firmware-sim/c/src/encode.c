/* The bounded writer and the text encodings of the JSON envelope. */
#include "internal.h"

#include <string.h>

static const char HEX[] = "0123456789abcdef";
static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void sg_writer_init(sg_writer *w, uint8_t *p, size_t cap)
{
    w->p = p;
    w->cap = p == NULL ? 0 : cap;
    w->len = 0;
    w->overflow = 0;
}

void sg_put(sg_writer *w, const void *data, size_t n)
{
    if (n == 0) {
        return;
    }
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = 1;
        return;
    }
    memcpy(w->p + w->len, data, n);
    w->len += n;
}

void sg_put_str(sg_writer *w, const char *s)
{
    sg_put(w, s, strlen(s));
}

void sg_put_be(sg_writer *w, uint64_t v, unsigned bytes)
{
    uint8_t b[8];
    unsigned i;
    for (i = 0; i < bytes && i < 8; i++) {
        b[bytes - 1 - i] = (uint8_t)(v >> (8 * i));
    }
    sg_put(w, b, i);
}

void sg_put_hex(sg_writer *w, const uint8_t *data, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char pair[2];
        pair[0] = HEX[data[i] >> 4];
        pair[1] = HEX[data[i] & 0x0f];
        sg_put(w, pair, 2);
    }
}

size_t sg_dec_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

void sg_put_dec(sg_writer *w, uint64_t v)
{
    char digits[20];
    size_t n = sg_dec_len(v);
    size_t i;
    for (i = n; i > 0; i--) {
        digits[i - 1] = (char)('0' + (v % 10));
        v /= 10;
    }
    sg_put(w, digits, n);
}

void sg_b64_init(sg_b64 *b)
{
    b->n = 0;
}

static void b64_quad(sg_writer *w, const uint8_t in[3], unsigned have)
{
    char q[4];
    uint32_t v = ((uint32_t)in[0] << 16) | ((uint32_t)(have > 1 ? in[1] : 0) << 8) |
                 (uint32_t)(have > 2 ? in[2] : 0);
    q[0] = B64[(v >> 18) & 63];
    q[1] = B64[(v >> 12) & 63];
    q[2] = have > 1 ? B64[(v >> 6) & 63] : '=';
    q[3] = have > 2 ? B64[v & 63] : '=';
    sg_put(w, q, 4);
}

void sg_b64_put(sg_b64 *b, sg_writer *w, const uint8_t *data, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        b->carry[b->n++] = data[i];
        if (b->n == 3) {
            b64_quad(w, b->carry, 3);
            b->n = 0;
        }
    }
}

void sg_b64_finish(sg_b64 *b, sg_writer *w)
{
    if (b->n > 0) {
        b64_quad(w, b->carry, b->n);
        b->n = 0;
    }
}

size_t sg_b64_len(size_t n)
{
    return (n / 3 + (n % 3 != 0)) * 4;
}
