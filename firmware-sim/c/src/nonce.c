/* The nonce counter with flash reservation (spec section 6).
 *
 * Flash holds one value V. A boot counts from V + K, so every nonce this boot
 * hands out must stay below V + K. At boot: read R, store R + K, count from
 * R + K. While running: before handing out V + K, store it as the new V. A
 * power cut at any point therefore leaves flash at a value V with every nonce
 * ever handed out below V + K, and the next boot starts at V + K. Flash is
 * written once per boot and once per K nonces. */
#include "sealgate.h"

#define U64_MAX ((uint64_t)-1)

sg_status sg_nonce_begin(sg_nonce_counter *c, uint64_t k, sg_load_fn load,
                         sg_store_fn store, void *ctx)
{
    uint64_t r = 0;
    int rc;
    if (c == NULL) {
        return SG_ERR_BAD_ARG;
    }
    c->ready = 0;
    if (k == 0 || load == NULL || store == NULL) {
        return SG_ERR_BAD_ARG;
    }
    rc = load(ctx, &r);
    if (rc == SG_STORE_EMPTY) {
        r = 0;
    } else if (rc != SG_STORE_OK) {
        return SG_ERR_STORE;
    }
    if (r > U64_MAX - k) {
        return SG_ERR_EXHAUSTED;
    }
    if (store(ctx, r + k) != 0) {
        return SG_ERR_STORE;
    }
    c->next = r + k;
    c->reserved = r + k;
    c->step = k;
    c->store = store;
    c->ctx = ctx;
    c->ready = 1;
    return SG_OK;
}

sg_status sg_nonce_next(sg_nonce_counter *c, uint64_t *nonce)
{
    if (c == NULL || nonce == NULL) {
        return SG_ERR_BAD_ARG;
    }
    if (!c->ready) {
        return SG_ERR_NOT_READY;
    }
    /* next wraps to 0 only after 2^64-1 was handed out. */
    if (c->next == 0) {
        return SG_ERR_EXHAUSTED;
    }
    /* When reserved + K overflows, a reboot refuses to start (exhausted), so
     * every remaining nonce is already covered. */
    if (c->reserved <= U64_MAX - c->step && c->next >= c->reserved + c->step) {
        if (c->store(c->ctx, c->next) != 0) {
            return SG_ERR_STORE;
        }
        c->reserved = c->next;
    }
    *nonce = c->next;
    c->next++;
    return SG_OK;
}
