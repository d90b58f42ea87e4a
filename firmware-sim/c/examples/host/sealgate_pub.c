/*
 * sealgate_pub: publishes sealed messages to a sealgate gateway from a host,
 * the way a device would: the library for keys, sealing, the connect
 * password and the nonce counter, libmosquitto for MQTT.
 *
 *   sealgate_pub HOST PORT DEVICE_ID KID SECRET_HEX STREAM COUNT ENCODING
 *                PREFIX NONCE_FILE
 *
 * ENCODING is json, binary, json-aes or binary-aes. Message i (0-based) has
 * the plaintext PREFIX followed by i in decimal and goes to
 * sealed/DEVICE_ID/STREAM (sealed/DEVICE_ID when STREAM is empty) at QoS 1;
 * each is sent only after the previous one's PUBACK. NONCE_FILE holds the
 * nonce reservation, so later runs never reuse a nonce. Exits 0 once every
 * message was acknowledged, 1 with a message on stderr otherwise.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <mosquitto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sealgate.h"

/* Messages reserved per flash (here: file) write. Small, so that even a
 * short run crosses a reservation boundary and writes the file again. */
#define RESERVE_K 4
/* Longest wait for a CONNACK or a PUBACK. */
#define WAIT_SECONDS 30
#define MAX_BODY 256
#define MAX_TOPIC (sizeof "sealed/" + SG_MAX_DEVICE_ID_LEN + 1 + SG_MAX_STREAM_LEN)

static void fail(const char *fmt, ...) {
    va_list ap;
    fputs("sealgate_pub: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ---- the nonce reservation, in a file ---------------------------------- */

static int load_reservation(void *ctx, uint64_t *value) {
    const char *path = ctx;
    char buf[32];
    size_t n;
    char *end;
    unsigned long long v;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return errno == ENOENT ? SG_STORE_EMPTY : -1;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    if (ferror(f) || fclose(f) != 0) {
        return -1;
    }
    buf[n] = '\0';
    if (n == 0 || buf[0] < '0' || buf[0] > '9') {
        return -1;
    }
    errno = 0;
    v = strtoull(buf, &end, 10);
    if (errno != 0 || (*end != '\0' && *end != '\n')) {
        return -1;
    }
    *value = (uint64_t)v;
    return SG_STORE_OK;
}

/* The rename is durable only once the directory holding it is synced. */
static int sync_parent(const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t len = slash == NULL ? 0 : (size_t)(slash - path);
    int fd, rc;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (len == 0) {
        strcpy(dir, "/");
    } else if (len < sizeof dir) {
        memcpy(dir, path, len);
        dir[len] = '\0';
    } else {
        return -1;
    }
    fd = open(dir, O_RDONLY);
    if (fd < 0) {
        return -1;
    }
    rc = fsync(fd);
    return close(fd) == 0 && rc == 0 ? 0 : -1;
}

/* Durable and atomic, as sg_store_fn requires: write a temporary file, fsync
 * it, rename it over the old one. A crash leaves the old or the new value. */
static int store_reservation(void *ctx, uint64_t value) {
    const char *path = ctx;
    char tmp[PATH_MAX];
    char text[32];
    int fd;
    int len = snprintf(text, sizeof text, "%" PRIu64 "\n", value);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp || len < 0) {
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return -1;
    }
    if (write(fd, text, (size_t)len) != len || fsync(fd) != 0) {
        close(fd);
        return -1;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        return -1;
    }
    return sync_parent(path);
}

/* ---- randomness --------------------------------------------------------- */

static int fill_random(void *ctx, uint8_t *buf, size_t len) {
    FILE *urandom = ctx;
    return fread(buf, 1, len, urandom) == len ? 0 : -1;
}

/* ---- arguments ---------------------------------------------------------- */

static uint64_t parse_u64(const char *what, const char *s, uint64_t max) {
    char *end;
    unsigned long long v;
    if (s[0] < '0' || s[0] > '9') {
        fail("%s must be a decimal number", what);
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max) {
        fail("%s must be a decimal number up to %" PRIu64, what, max);
    }
    return (uint64_t)v;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static void parse_secret(const char *s, uint8_t out[SG_SECRET_LEN]) {
    size_t i;
    if (strlen(s) != 2 * SG_SECRET_LEN) {
        fail("the secret must be %d hex digits", 2 * SG_SECRET_LEN);
    }
    for (i = 0; i < SG_SECRET_LEN; i++) {
        int hi = hex_digit(s[2 * i]);
        int lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fail("the secret must be %d hex digits", 2 * SG_SECRET_LEN);
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
}

static void parse_encoding(const char *s, sg_encoding *encoding, int *encrypt) {
    if (strcmp(s, "json") == 0 || strcmp(s, "json-aes") == 0) {
        *encoding = SG_ENCODING_JSON;
    } else if (strcmp(s, "binary") == 0 || strcmp(s, "binary-aes") == 0) {
        *encoding = SG_ENCODING_BINARY;
    } else {
        fail("unknown encoding \"%s\" (json, binary, json-aes, binary-aes)", s);
    }
    *encrypt = strstr(s, "-aes") != NULL;
}

/* ---- MQTT ----------------------------------------------------------------- */

struct session {
    int connack; /* -1 until the CONNACK, then its return code */
    int acked_mid;
    int disconnected;
};

static void on_connect(struct mosquitto *m, void *ctx, int rc) {
    struct session *s = ctx;
    (void)m;
    s->connack = rc;
}

static void on_publish(struct mosquitto *m, void *ctx, int mid) {
    struct session *s = ctx;
    (void)m;
    s->acked_mid = mid;
}

static void on_disconnect(struct mosquitto *m, void *ctx, int rc) {
    struct session *s = ctx;
    (void)m;
    (void)rc;
    s->disconnected = 1;
}

/* Runs the network loop until done(s) or the deadline. */
static void loop_until(struct mosquitto *m, struct session *s, int (*done)(const struct session *, int),
                       int arg, const char *what) {
    time_t deadline = time(NULL) + WAIT_SECONDS;
    while (!done(s, arg)) {
        int rc;
        if (s->disconnected) {
            fail("the gateway closed the connection while waiting for %s", what);
        }
        if (time(NULL) > deadline) {
            fail("no %s within %d s", what, WAIT_SECONDS);
        }
        rc = mosquitto_loop(m, 1000, 1);
        if (rc != MOSQ_ERR_SUCCESS && !done(s, arg)) {
            fail("connection lost while waiting for %s: %s", what, mosquitto_strerror(rc));
        }
    }
}

static int got_connack(const struct session *s, int unused) {
    (void)unused;
    return s->connack >= 0;
}

static int got_puback(const struct session *s, int mid) {
    return s->acked_mid == mid;
}

int main(int argc, char **argv) {
    const char *host, *device_arg, *stream, *prefix, *nonce_file;
    uint64_t port, kid, count, i, first_nonce = 0, last_nonce = 0;
    uint8_t secret[SG_SECRET_LEN];
    sg_encoding encoding;
    int encrypt, rc;
    sg_status st;
    sg_device dev;
    sg_nonce_counter counter;
    char password[SG_CONNECT_PASSWORD_SIZE];
    size_t password_len;
    char topic[MAX_TOPIC];
    struct mosquitto *m;
    struct session session = {-1, -1, 0};
    FILE *urandom;

    if (argc != 11) {
        fprintf(stderr,
                "usage: %s HOST PORT DEVICE_ID KID SECRET_HEX STREAM COUNT ENCODING PREFIX NONCE_FILE\n"
                "  ENCODING: json, binary, json-aes or binary-aes\n",
                argv[0]);
        return 1;
    }
    host = argv[1];
    port = parse_u64("PORT", argv[2], 65535);
    device_arg = argv[3];
    kid = parse_u64("KID", argv[4], UINT32_MAX);
    parse_secret(argv[5], secret);
    stream = argv[6];
    count = parse_u64("COUNT", argv[7], UINT32_MAX);
    parse_encoding(argv[8], &encoding, &encrypt);
    prefix = argv[9];
    nonce_file = argv[10];
    if (strlen(prefix) > MAX_BODY - 20) {
        fail("PREFIX is longer than %d bytes", MAX_BODY - 20);
    }

    st = sg_device_init(&dev, device_arg, (uint32_t)kid, secret);
    memset(secret, 0, sizeof secret);
    if (st != SG_OK) {
        fail("device id or kid refused: %s", sg_status_name(st));
    }
    if (strlen(stream) > SG_MAX_STREAM_LEN) {
        fail("STREAM is longer than %d bytes", SG_MAX_STREAM_LEN);
    }
    snprintf(topic, sizeof topic, "sealed/%s%s%s", dev.device_id, stream[0] ? "/" : "", stream);

    urandom = fopen("/dev/urandom", "rb");
    if (urandom == NULL) {
        fail("cannot open /dev/urandom: %s", strerror(errno));
    }
    st = sg_nonce_begin(&counter, RESERVE_K, load_reservation, store_reservation, (void *)nonce_file);
    if (st != SG_OK) {
        fail("nonce reservation in %s: %s", nonce_file, sg_status_name(st));
    }
    /* expiry 0: a token that never expires, as the gateway's own. */
    st = sg_connect_password(&dev, 0, password, sizeof password, &password_len);
    if (st != SG_OK) {
        fail("connect password: %s", sg_status_name(st));
    }

    mosquitto_lib_init();
    /* Client id = user name = the normalised device id. */
    m = mosquitto_new(dev.device_id, true, &session);
    if (m == NULL) {
        fail("mosquitto_new: %s", strerror(errno));
    }
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_disconnect_callback_set(m, on_disconnect);
    rc = mosquitto_username_pw_set(m, dev.device_id, password);
    memset(password, 0, sizeof password);
    if (rc != MOSQ_ERR_SUCCESS) {
        fail("mosquitto_username_pw_set: %s", mosquitto_strerror(rc));
    }
    rc = mosquitto_connect(m, host, (int)port, 60);
    if (rc != MOSQ_ERR_SUCCESS) {
        fail("cannot connect to %s:%" PRIu64 ": %s", host, port,
             rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    }
    loop_until(m, &session, got_connack, 0, "CONNACK");
    if (session.connack != 0) {
        fail("the gateway refused the connection: %s", mosquitto_connack_string(session.connack));
    }

    for (i = 0; i < count; i++) {
        uint8_t body[MAX_BODY];
        uint8_t sealed[1024];
        size_t sealed_len;
        int mid;
        int body_len = snprintf((char *)body, sizeof body, "%s%" PRIu64, prefix, i);
        sg_message msg;
        msg.stream = stream;
        msg.body = body;
        msg.body_len = (size_t)body_len;
        msg.encoding = encoding;
        msg.encrypt = encrypt;
        st = sg_nonce_next(&counter, &msg.nonce);
        if (st != SG_OK) {
            fail("no nonce for message %" PRIu64 ": %s", i, sg_status_name(st));
        }
        if (i == 0) {
            first_nonce = msg.nonce;
        }
        last_nonce = msg.nonce;
        st = sg_seal(&dev, &msg, fill_random, urandom, sealed, sizeof sealed, &sealed_len);
        if (st != SG_OK) {
            fail("sealing message %" PRIu64 ": %s", i, sg_status_name(st));
        }
        rc = mosquitto_publish(m, &mid, topic, (int)sealed_len, sealed, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            fail("publishing message %" PRIu64 ": %s", i, mosquitto_strerror(rc));
        }
        loop_until(m, &session, got_puback, mid, "PUBACK");
    }

    mosquitto_disconnect(m);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    fclose(urandom);
    sg_device_wipe(&dev);
    if (count > 0) {
        printf("published %" PRIu64 " message%s to %s, nonces %" PRIu64 "..%" PRIu64 "\n", count,
               count == 1 ? "" : "s", topic, first_nonce, last_nonce);
    } else {
        printf("published nothing to %s\n", topic);
    }
    return 0;
}
