/* Unit tests of the C library: text encodings, every error code, every
 * buffer boundary, and the nonce reservation under power loss at every step.
 * Exits non-zero on the first failed check. tests/c_library.rs builds and
 * runs it, plain and under AddressSanitizer + UndefinedBehaviorSanitizer. */
#include "sealgate.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

#define U64_MAX ((uint64_t)-1)

static const uint8_t SECRET[SG_SECRET_LEN] = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

/* ---- encodings -------------------------------------------------------- */

static void test_base64_rfc4648(void)
{
    static const char *const want[] = {"", "Zg==", "Zm8=", "Zm9v",
                                       "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    const uint8_t *in = (const uint8_t *)"foobar";
    size_t n, split;
    for (n = 0; n <= 6; n++) {
        /* fed in two pieces, split at every position */
        for (split = 0; split <= n; split++) {
            uint8_t out[16];
            sg_writer w;
            sg_b64 b;
            sg_writer_init(&w, out, sizeof out);
            sg_b64_init(&b);
            sg_b64_put(&b, &w, in, split);
            sg_b64_put(&b, &w, in + split, n - split);
            sg_b64_finish(&b, &w);
            CHECK(!w.overflow);
            CHECK(w.len == strlen(want[n]) && w.len == sg_b64_len(n));
            CHECK(memcmp(out, want[n], w.len) == 0);
        }
    }
}

static void test_hex_and_decimal(void)
{
    static const uint8_t bytes[] = {0x00, 0x0f, 0xa5, 0xff};
    uint8_t out[32];
    sg_writer w;
    sg_writer_init(&w, out, sizeof out);
    sg_put_hex(&w, bytes, sizeof bytes);
    CHECK(w.len == 8 && memcmp(out, "000fa5ff", 8) == 0);
    sg_writer_init(&w, out, sizeof out);
    sg_put_dec(&w, 0);
    sg_put(&w, ",", 1);
    sg_put_dec(&w, 10);
    sg_put(&w, ",", 1);
    sg_put_dec(&w, U64_MAX);
    CHECK(w.len == 25 && memcmp(out, "0,10,18446744073709551615", 25) == 0);
    CHECK(sg_dec_len(9) == 1 && sg_dec_len(10) == 2 && sg_dec_len(U64_MAX) == 20);
}

static void test_writer_never_overruns(void)
{
    uint8_t out[8];
    sg_writer w;
    memset(out, 0xee, sizeof out);
    sg_writer_init(&w, out, 4);
    sg_put(&w, "abc", 3);
    sg_put(&w, "de", 2);
    CHECK(w.overflow && w.len == 3);
    sg_put(&w, "f", 1); /* would fit, but the output is already broken */
    CHECK(w.len == 3 && out[3] == 0xee && out[4] == 0xee);
    sg_writer_init(&w, NULL, 100);
    sg_put(&w, "a", 1);
    CHECK(w.overflow && w.len == 0);
}

/* ---- device and connect password -------------------------------------- */

static void test_device_ids(void)
{
    static const char *const bad[] = {
        "", " \t", "-a", ".a", "esp32 a1!", "a/b", "\xc3\xa9", "a\vb", "\va",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    const char *longest =
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    sg_device dev;
    size_t i;
    CHECK(sg_device_init(&dev, " ESP32-A1\t\r\n\f", 1, SECRET) == SG_OK);
    CHECK(strcmp(dev.device_id, "esp32-a1") == 0 && dev.device_id_len == 8);
    CHECK(sg_device_init(&dev, "a.b:c_d-e", 7, SECRET) == SG_OK);
    CHECK(strcmp(dev.device_id, "a.b:c_d-e") == 0 && dev.kid == 7);
    CHECK(sg_device_init(&dev, longest, 1, SECRET) == SG_OK);
    CHECK(dev.device_id_len == 64);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(sg_device_init(&dev, bad[i], 1, SECRET) == SG_ERR_BAD_ARG);
        CHECK(dev.kid == 0); /* a failed init leaves nothing usable */
    }
    CHECK(sg_device_init(NULL, "d", 1, SECRET) == SG_ERR_BAD_ARG);
    CHECK(sg_device_init(&dev, NULL, 1, SECRET) == SG_ERR_BAD_ARG);
    CHECK(sg_device_init(&dev, "d", 1, NULL) == SG_ERR_BAD_ARG);
    CHECK(sg_device_init(&dev, "d", 0, SECRET) == SG_ERR_BAD_ARG);
}

static void test_wipe(void)
{
    static const uint8_t zero[32] = {0};
    sg_device dev;
    CHECK(sg_device_init(&dev, "d", 1, SECRET) == SG_OK);
    CHECK(memcmp(dev.k_mac, zero, 32) != 0);
    sg_device_wipe(&dev);
    CHECK(memcmp(dev.k_mac, zero, 32) == 0 && memcmp(dev.k_auth, zero, 32) == 0 &&
          memcmp(dev.k_enc, zero, 16) == 0 && dev.kid == 0);
    sg_device_wipe(NULL);
}

static void test_connect_password_boundaries(void)
{
    uint64_t expiries[] = {0, 9, 1893456000, U64_MAX};
    sg_device dev, blank;
    size_t e;
    CHECK(sg_device_init(&dev, "esp32-a1", 1, SECRET) == SG_OK);
    for (e = 0; e < sizeof expiries / sizeof expiries[0]; e++) {
        char full[SG_CONNECT_PASSWORD_SIZE];
        size_t want, cap, len = 99;
        CHECK(sg_connect_password(&dev, expiries[e], full, sizeof full, &len) == SG_OK);
        want = 3 + sg_dec_len(expiries[e]) + 1 + 64;
        CHECK(len == want && strlen(full) == want && strncmp(full, "v1:", 3) == 0);
        /* every capacity short of the string and its NUL is refused */
        for (cap = 0; cap <= want; cap++) {
            char *out = malloc(cap + 1);
            CHECK(out != NULL);
            len = 99;
            out[cap] = 'X';
            CHECK(sg_connect_password(&dev, expiries[e], out, cap, &len) ==
                  SG_ERR_BUFFER_TOO_SMALL);
            CHECK(len == 0 && out[cap] == 'X');
            free(out);
        }
    }
    {
        char out[SG_CONNECT_PASSWORD_SIZE];
        size_t len;
        memset(&blank, 0, sizeof blank);
        CHECK(sg_connect_password(&blank, 1, out, sizeof out, &len) == SG_ERR_BAD_ARG);
        CHECK(sg_connect_password(NULL, 1, out, sizeof out, &len) == SG_ERR_BAD_ARG);
        CHECK(sg_connect_password(&dev, 1, out, sizeof out, NULL) == SG_ERR_BAD_ARG);
        CHECK(sg_connect_password(&dev, 1, NULL, sizeof out, &len) == SG_ERR_BAD_ARG);
    }
}

/* ---- sealing ---------------------------------------------------------- */

typedef struct {
    int calls;
    int fail;
} rng_state;

static int counting_rng(void *ctx, uint8_t *buf, size_t len)
{
    rng_state *r = ctx;
    size_t i;
    r->calls++;
    if (r->fail) {
        return -1;
    }
    for (i = 0; i < len; i++) {
        buf[i] = (uint8_t)(r->calls * 31 + (int)i);
    }
    return 0;
}

static sg_message message(const uint8_t *body, size_t len, sg_encoding e, int encrypt)
{
    sg_message m;
    m.stream = "telemetry";
    m.nonce = 10001;
    m.body = body;
    m.body_len = len;
    m.encoding = e;
    m.encrypt = encrypt;
    return m;
}

static void test_seal_every_capacity(void)
{
    static const size_t lens[] = {0, 1, 15, 16, 17, 47};
    uint8_t body[47];
    sg_device dev;
    size_t l, e, enc, cap;
    memset(body, 0x5a, sizeof body);
    CHECK(sg_device_init(&dev, "esp32-a1", 1, SECRET) == SG_OK);
    for (l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        for (e = 0; e < 2; e++) {
            for (enc = 0; enc < 2; enc++) {
                sg_message m = message(body, lens[l], (sg_encoding)e, (int)enc);
                size_t want = sg_sealed_len(&dev, &m);
                CHECK(want > 0);
                for (cap = 0; cap <= want; cap++) {
                    rng_state rng = {0, 0};
                    uint8_t *out = malloc(cap + 1);
                    size_t len = 99;
                    int rc;
                    CHECK(out != NULL);
                    memset(out, 0xee, cap + 1);
                    rc = sg_seal(&dev, &m, counting_rng, &rng, out, cap, &len);
                    if (cap < want) {
                        /* refused before any randomness is spent or byte written */
                        size_t i;
                        CHECK(rc == SG_ERR_BUFFER_TOO_SMALL && len == 0 && rng.calls == 0);
                        for (i = 0; i <= cap; i++) {
                            CHECK(out[i] == 0xee);
                        }
                    } else {
                        CHECK(rc == SG_OK && len == want && out[cap] == 0xee);
                        CHECK(rng.calls == (int)enc);
                        CHECK(e == SG_ENCODING_BINARY ? memcmp(out, "SG\x01", 3) == 0
                                                      : out[0] == '{' && out[len - 1] == '}');
                    }
                    free(out);
                }
            }
        }
    }
}

static void test_seal_bad_arguments(void)
{
    char long_stream[SG_MAX_STREAM_LEN + 2];
    uint8_t out[512];
    uint8_t body[4] = {1, 2, 3, 4};
    rng_state rng = {0, 0};
    sg_device dev, blank;
    sg_message m;
    size_t len;
    CHECK(sg_device_init(&dev, "esp32-a1", 1, SECRET) == SG_OK);
    memset(&blank, 0, sizeof blank);
    memset(long_stream, 's', sizeof long_stream - 1);
    long_stream[sizeof long_stream - 1] = '\0';

#define REFUSED(d, msg, rngfn)                                                 \
    do {                                                                      \
        len = 99;                                                             \
        CHECK(sg_seal(d, msg, rngfn, &rng, out, sizeof out, &len) == SG_ERR_BAD_ARG); \
        CHECK(len == 0 && sg_sealed_len(d, msg) == 0);                        \
    } while (0)

    m = message(body, 4, SG_ENCODING_JSON, 0);
    REFUSED(NULL, &m, counting_rng);
    REFUSED(&blank, &m, counting_rng);
    REFUSED(&dev, NULL, counting_rng);
    m.nonce = 0;
    REFUSED(&dev, &m, counting_rng);
    m = message(body, 4, SG_ENCODING_JSON, 0);
    m.stream = NULL;
    REFUSED(&dev, &m, counting_rng);
    m.stream = long_stream; /* 201 bytes */
    REFUSED(&dev, &m, counting_rng);
    long_stream[SG_MAX_STREAM_LEN] = '\0'; /* 200 bytes is allowed */
    len = 0;
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, out, sizeof out, &len) == SG_OK && len > 0);
    m = message(NULL, 4, SG_ENCODING_JSON, 0);
    REFUSED(&dev, &m, counting_rng);
    m = message(NULL, 0, SG_ENCODING_BINARY, 0); /* an empty body may be NULL */
    CHECK(sg_seal(&dev, &m, NULL, NULL, out, sizeof out, &len) == SG_OK && len == 48);
    m = message(body, 4, (sg_encoding)7, 0);
    REFUSED(&dev, &m, counting_rng);
    m = message(body, 4, SG_ENCODING_JSON, 1);
    len = 99;
    CHECK(sg_seal(&dev, &m, NULL, NULL, out, sizeof out, &len) == SG_ERR_BAD_ARG && len == 0);
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, out, sizeof out, NULL) == SG_ERR_BAD_ARG);
    len = 99;
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, NULL, sizeof out, &len) == SG_ERR_BAD_ARG);
    CHECK(len == 0);
    m = message(body, ((size_t)-1) / 2, SG_ENCODING_JSON, 1);
    REFUSED(&dev, &m, counting_rng);
    CHECK(rng.calls == 0);
#undef REFUSED
}

static void test_seal_rng(void)
{
    uint8_t out[256], first[256];
    uint8_t body[20] = {0};
    sg_device dev;
    sg_message m;
    rng_state rng = {0, 1};
    size_t len = 99, first_len;
    CHECK(sg_device_init(&dev, "esp32-a1", 1, SECRET) == SG_OK);
    m = message(body, sizeof body, SG_ENCODING_BINARY, 1);
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, out, sizeof out, &len) == SG_ERR_RNG);
    CHECK(len == 0 && rng.calls == 1);
    /* each seal asks for a fresh IV: same inputs, different frames */
    rng.fail = 0;
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, first, sizeof first, &first_len) == SG_OK);
    CHECK(sg_seal(&dev, &m, counting_rng, &rng, out, sizeof out, &len) == SG_OK);
    CHECK(len == first_len && rng.calls == 3);
    CHECK(memcmp(out + 16, first + 16, 16) != 0); /* the IVs */
    CHECK(memcmp(out + 32, first + 32, len - 32) != 0);
}

static void test_status_names(void)
{
    int s;
    for (s = SG_ERR_NOT_READY; s <= SG_OK; s++) {
        CHECK(strcmp(sg_status_name((sg_status)s), "unknown") != 0);
    }
    CHECK(strcmp(sg_status_name(SG_ERR_BUFFER_TOO_SMALL), "buffer_too_small") == 0);
}

/* ---- nonce reservation ------------------------------------------------ */

enum cut_mode {
    CUT_BEFORE_WRITE, /* power lost before the store reached flash */
    CUT_AFTER_WRITE,  /* the store reached flash, power lost before its ack */
    FAIL_NO_WRITE,    /* the store fails cleanly and the device carries on */
    FAIL_AFTER_WRITE, /* the store wrote but reported failure; device carries on */
    CUT_MODES
};

/* Flash holding one reservation, with a fault injected at one event. Events
 * are every load, every store and every nonce handed out. */
typedef struct {
    uint64_t value;
    int present;
    long writes;
    long events;
    long fault_at; /* 0: none */
    enum cut_mode mode;
    int dead;      /* power is off: the device reboots */
    int load_fails;
} flash_sim;

static int fault_now(flash_sim *f)
{
    return ++f->events == f->fault_at;
}

static int sim_load(void *ctx, uint64_t *value)
{
    flash_sim *f = ctx;
    CHECK(!f->dead);
    if (f->load_fails || fault_now(f)) {
        if (!f->load_fails && f->mode <= CUT_AFTER_WRITE) {
            f->dead = 1;
        }
        return -1;
    }
    *value = f->value;
    return f->present ? SG_STORE_OK : SG_STORE_EMPTY;
}

static int sim_store(void *ctx, uint64_t value)
{
    flash_sim *f = ctx;
    CHECK(!f->dead);
    if (fault_now(f)) {
        if (f->mode == CUT_AFTER_WRITE || f->mode == FAIL_AFTER_WRITE) {
            f->value = value;
            f->present = 1;
            f->writes++;
        }
        if (f->mode <= CUT_AFTER_WRITE) {
            f->dead = 1;
        }
        return -1;
    }
    f->value = value;
    f->present = 1;
    f->writes++;
    return 0;
}

/* Every nonce the device ever handed out, in order, across reboots. */
typedef struct {
    uint64_t last;
    long count;
} history;

/* Runs one boot until `want` nonces were handed out or power is lost.
 * Returns the number handed out. */
static long boot(flash_sim *f, uint64_t k, long want, history *h)
{
    sg_nonce_counter c;
    long got = 0;
    int tries = 0;
    sg_status rc;
    memset(&c, 0xa5, sizeof c); /* RAM does not survive a reboot */
    do {
        rc = sg_nonce_begin(&c, k, sim_load, sim_store, f);
        if (f->dead) {
            return 0;
        }
        CHECK(rc == SG_OK || rc == SG_ERR_STORE);
        CHECK(++tries < 10);
    } while (rc != SG_OK);
    while (got < want) {
        uint64_t n = 0;
        rc = sg_nonce_next(&c, &n);
        if (f->dead) {
            CHECK(rc == SG_ERR_STORE);
            return got;
        }
        if (rc == SG_ERR_STORE) {
            continue; /* a clean failure: nothing handed out, try again */
        }
        CHECK(rc == SG_OK);
        /* strictly above every nonce of every earlier boot */
        CHECK(h->count == 0 || n > h->last);
        /* the invariant: flash covers every nonce handed out */
        CHECK(f->present && n < f->value + k);
        h->last = n;
        h->count++;
        got++;
        if (fault_now(f) && f->mode <= CUT_AFTER_WRITE) {
            f->dead = 1; /* power lost right after this nonce went out */
            return got;
        }
    }
    return got;
}

/* Two faults, each at every event of its boot, in every mode; then a clean
 * boot. No nonce may ever repeat or go backwards. */
static void test_reservation_power_loss(void)
{
    static const uint64_t ks[] = {1, 2, 3, 7};
    size_t ki;
    long a, b;
    int ma, mb;
    for (ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        uint64_t k = ks[ki];
        long span = (long)(4 * k + 6); /* events of a boot handing out 3K+3 */
        for (a = 1; a <= span; a++) {
            for (ma = 0; ma < CUT_MODES; ma++) {
                for (b = 1; b <= span; b++) {
                    for (mb = 0; mb < CUT_MODES; mb++) {
                        flash_sim f;
                        history h = {0, 0};
                        memset(&f, 0, sizeof f);
                        f.fault_at = a;
                        f.mode = (enum cut_mode)ma;
                        boot(&f, k, (long)(3 * k + 3), &h);
                        f.dead = 0;
                        f.events = 0;
                        f.fault_at = b;
                        f.mode = (enum cut_mode)mb;
                        boot(&f, k, (long)(3 * k + 3), &h);
                        f.dead = 0;
                        f.fault_at = 0;
                        CHECK(boot(&f, k, (long)(2 * k + 1), &h) == (long)(2 * k + 1));
                    }
                }
            }
        }
    }
}

static void test_reservation_writes_once_per_k(void)
{
    flash_sim f;
    history h = {0, 0};
    memset(&f, 0, sizeof f);
    /* empty flash: count from K; one write at boot, one per K after */
    CHECK(boot(&f, 10, 95, &h) == 95);
    CHECK(h.last == 10 + 94 && f.writes == 1 + 9 && f.value == 100);
    /* a reboot reads R = 100 and counts from R + K */
    CHECK(boot(&f, 10, 1, &h) == 1 && h.last == 110 && f.value == 110);
}

static int fail_load(void *ctx, uint64_t *v)
{
    (void)ctx;
    (void)v;
    return -1;
}

static void test_reservation_errors(void)
{
    sg_nonce_counter c;
    flash_sim f;
    uint64_t n = 0;
    memset(&f, 0, sizeof f);
    memset(&c, 0, sizeof c);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_NOT_READY);
    CHECK(sg_nonce_begin(NULL, 10, sim_load, sim_store, &f) == SG_ERR_BAD_ARG);
    CHECK(sg_nonce_begin(&c, 0, sim_load, sim_store, &f) == SG_ERR_BAD_ARG);
    CHECK(sg_nonce_begin(&c, 10, NULL, sim_store, &f) == SG_ERR_BAD_ARG);
    CHECK(sg_nonce_begin(&c, 10, sim_load, NULL, &f) == SG_ERR_BAD_ARG);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_NOT_READY);
    CHECK(sg_nonce_begin(&c, 10, fail_load, sim_store, &f) == SG_ERR_STORE);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_NOT_READY && f.writes == 0);
    CHECK(sg_nonce_begin(&c, 10, sim_load, sim_store, &f) == SG_OK);
    CHECK(sg_nonce_next(NULL, &n) == SG_ERR_BAD_ARG);
    CHECK(sg_nonce_next(&c, NULL) == SG_ERR_BAD_ARG);
    /* a failed begin after a good one leaves the counter unusable */
    f.load_fails = 1;
    CHECK(sg_nonce_begin(&c, 10, sim_load, sim_store, &f) == SG_ERR_STORE);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_NOT_READY);
}

static void test_reservation_exhaustion(void)
{
    sg_nonce_counter c;
    flash_sim f;
    uint64_t n = 0;
    memset(&f, 0, sizeof f);
    f.present = 1;
    f.value = U64_MAX - 10 + 1; /* R + K would pass 2^64-1 */
    CHECK(sg_nonce_begin(&c, 10, sim_load, sim_store, &f) == SG_ERR_EXHAUSTED);
    CHECK(f.writes == 0);
    f.value = U64_MAX - 12; /* counts from 2^64-3 */
    CHECK(sg_nonce_begin(&c, 10, sim_load, sim_store, &f) == SG_OK);
    CHECK(sg_nonce_next(&c, &n) == SG_OK && n == U64_MAX - 2);
    CHECK(sg_nonce_next(&c, &n) == SG_OK && n == U64_MAX - 1);
    CHECK(sg_nonce_next(&c, &n) == SG_OK && n == U64_MAX);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_EXHAUSTED && n == U64_MAX);
    CHECK(sg_nonce_next(&c, &n) == SG_ERR_EXHAUSTED);
    /* a reboot cannot start again below what was handed out */
    CHECK(sg_nonce_begin(&c, 10, sim_load, sim_store, &f) == SG_ERR_EXHAUSTED);
}

int main(void)
{
    test_base64_rfc4648();
    test_hex_and_decimal();
    test_writer_never_overruns();
    test_device_ids();
    test_wipe();
    test_connect_password_boundaries();
    test_seal_every_capacity();
    test_seal_bad_arguments();
    test_seal_rng();
    test_status_names();
    test_reservation_power_loss();
    test_reservation_writes_once_per_k();
    test_reservation_errors();
    test_reservation_exhaustion();
    printf("all C unit tests passed\n");
    return 0;
}
