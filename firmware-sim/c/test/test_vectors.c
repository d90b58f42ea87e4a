/* Runs the library on a line-oriented case file and prints one result line
 * per case: "<name> <result>". The Rust test (tests/c_library.rs) writes the
 * cases from tests/vectors/vectors.json and compares the results.
 *
 *   keys  <name> <secret> <id> <kid>                   -> k_mac:k_enc:k_auth (hex)
 *   token <name> <secret> <id> <kid> <expiry>          -> the connect password
 *   seal  <name> <secret> <id> <kid> <stream> <nonce> <json|binary> <iv|-> <body|->
 *                                                      -> the sealed bytes (hex)
 *
 * Strings and bytes are hex ("-" when empty). Outputs are built in heap
 * buffers of exactly the size the library asks for, so AddressSanitizer sees
 * any write past the end. */
#include "sealgate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELD 1024

static int unhex(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0) {
        *len = 0;
        return 0;
    }
    while (s[0] != '\0' && s[1] != '\0') {
        unsigned v;
        if (n == cap || sscanf(s, "%2x", &v) != 1) {
            return -1;
        }
        out[n++] = (uint8_t)v;
        s += 2;
    }
    *len = n;
    return s[0] == '\0' ? 0 : -1;
}

static void print_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
}

/* Hands out the vector's fixed IV in place of fresh randomness. */
static int fixed_iv(void *ctx, uint8_t *buf, size_t len)
{
    memcpy(buf, ctx, len);
    return 0;
}

static int device(const char *secret_hex, const char *id_hex, const char *kid,
                  sg_device *dev)
{
    uint8_t secret[MAX_FIELD];
    char id[MAX_FIELD + 1];
    size_t n;
    if (unhex(secret_hex, secret, sizeof secret, &n) != 0 || n != SG_SECRET_LEN ||
        unhex(id_hex, (uint8_t *)id, MAX_FIELD, &n) != 0) {
        return -1;
    }
    id[n] = '\0';
    return sg_device_init(dev, id, (uint32_t)strtoul(kid, NULL, 10), secret);
}

static int run_seal(char **f, const sg_device *dev)
{
    uint8_t iv[MAX_FIELD];
    uint8_t body[MAX_FIELD];
    char stream[MAX_FIELD + 1];
    size_t iv_len, body_len, stream_len, len, out_len;
    sg_message msg;
    uint8_t *out;
    int rc;
    if (unhex(f[5], (uint8_t *)stream, MAX_FIELD, &stream_len) != 0 ||
        unhex(f[8], iv, sizeof iv, &iv_len) != 0 ||
        unhex(f[9], body, sizeof body, &body_len) != 0 ||
        (iv_len != 0 && iv_len != SG_IV_LEN)) {
        return -1;
    }
    stream[stream_len] = '\0';
    msg.stream = stream;
    msg.nonce = strtoull(f[6], NULL, 10);
    msg.body = body;
    msg.body_len = body_len;
    msg.encoding = strcmp(f[7], "binary") == 0 ? SG_ENCODING_BINARY : SG_ENCODING_JSON;
    msg.encrypt = iv_len != 0;
    len = sg_sealed_len(dev, &msg);
    out = malloc(len);
    if (out == NULL) {
        return -1;
    }
    rc = sg_seal(dev, &msg, fixed_iv, iv, out, len, &out_len);
    if (rc == SG_OK && out_len == len) {
        printf("%s ", f[1]);
        print_hex(out, out_len);
        printf("\n");
    } else {
        printf("%s error:%s:len=%lu:want=%lu\n", f[1], sg_status_name(rc),
               (unsigned long)out_len, (unsigned long)len);
    }
    free(out);
    return 0;
}

static int run_line(char *line)
{
    char *f[10];
    int n = 0;
    char *tok = strtok(line, " \n");
    sg_device dev;
    int rc;
    while (tok != NULL && n < 10) {
        f[n++] = tok;
        tok = strtok(NULL, " \n");
    }
    if (n < 5) {
        return n == 0 ? 0 : -1;
    }
    rc = device(f[2], f[3], f[4], &dev);
    if (rc != SG_OK) {
        printf("%s error:%s\n", f[1], rc < 0 ? sg_status_name(rc) : "input");
        return 0;
    }
    if (strcmp(f[0], "keys") == 0) {
        printf("%s ", f[1]);
        print_hex(dev.k_mac, sizeof dev.k_mac);
        printf(":");
        print_hex(dev.k_enc, sizeof dev.k_enc);
        printf(":");
        print_hex(dev.k_auth, sizeof dev.k_auth);
        printf("\n");
    } else if (strcmp(f[0], "token") == 0 && n == 6) {
        char *pw = malloc(SG_CONNECT_PASSWORD_SIZE);
        size_t len;
        if (pw == NULL) {
            return -1;
        }
        rc = sg_connect_password(&dev, strtoull(f[5], NULL, 10), pw,
                                 SG_CONNECT_PASSWORD_SIZE, &len);
        printf("%s %s\n", f[1], rc == SG_OK && strlen(pw) == len ? pw : sg_status_name(rc));
        free(pw);
    } else if (strcmp(f[0], "seal") == 0 && n == 10) {
        rc = run_seal(f, &dev);
    } else {
        rc = -1;
    }
    sg_device_wipe(&dev);
    return rc;
}

int main(int argc, char **argv)
{
    static char line[8192];
    FILE *in;
    if (argc != 2 || (in = fopen(argv[1], "r")) == NULL) {
        fprintf(stderr, "usage: test_vectors CASES\n");
        return 2;
    }
    while (fgets(line, sizeof line, in) != NULL) {
        if (run_line(line) != 0) {
            fprintf(stderr, "unreadable case line\n");
            fclose(in);
            return 2;
        }
    }
    fclose(in);
    return 0;
}
