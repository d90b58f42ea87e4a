/* What one journal record's durability costs, by how the file got its
 * space: CPU and wall time per pwrite + fdatasync of RECORD bytes, written
 * in order into a 64 MiB file that was
 *   append     empty (every sync also commits the new file size),
 *   fallocate  given its space by fallocate (unwritten extents: each sync
 *              converts them, a file system journal commit),
 *   zeros      written with zeros and synced beforehand (what
 *              src/journal does with its spare: a sync is the data and the
 *              disk's cache flush only).
 * With a fourth argument, a thread appends 64 KiB every 2 ms to another
 * file meanwhile (as sled's log does), syncing it every 64 MiB.
 *
 *   gcc -O2 -pthread -o /tmp/sync_cost benches/sync_cost.c
 *   /tmp/sync_cost zeros 4000 2048 [background]   (in the data directory's
 *                                                  file system: DIR env, or .)
 * Results: docs/benchmarks.md, "The journal's spare". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SIZE (64L << 20)

static volatile int stop;
static char dir[4000];

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double cpu_us(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *background(void *unused) {
    char path[4100], buf[65536];
    (void)unused;
    snprintf(path, sizeof path, "%s/sync_cost-bg.dat", dir);
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    memset(buf, 'y', sizeof buf);
    for (long n = 1; !stop; n++) {
        if (write(fd, buf, sizeof buf) < 0) break;
        if (n % 1024 == 0) fsync(fd);
        usleep(2000);
    }
    close(fd);
    unlink(path);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s append|fallocate|zeros SYNCS RECORD_BYTES [background]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    int n = atoi(argv[2]);
    long rec = atol(argv[3]);
    if (n <= 0 || rec <= 0 || rec * n > SIZE) {
        fprintf(stderr, "SYNCS x RECORD_BYTES must be positive and fit in 64 MiB\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", getenv("DIR") ? getenv("DIR") : ".");
    char path[4100];
    snprintf(path, sizeof path, "%s/sync_cost.dat", dir);
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0) { perror(path); return 1; }
    if (!strcmp(mode, "fallocate")) {
        if (fallocate(fd, 0, 0, SIZE)) { perror("fallocate"); return 1; }
    } else if (!strcmp(mode, "zeros")) {
        char *z = calloc(1, 1 << 20);
        for (int i = 0; i < 64; i++)
            if (write(fd, z, 1 << 20) != 1 << 20) { perror("write"); return 1; }
        free(z);
    } else if (strcmp(mode, "append")) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    fsync(fd);
    pthread_t bg;
    if (argc > 4) pthread_create(&bg, NULL, background, NULL);
    char *buf = malloc(rec);
    double *lat = malloc(sizeof(double) * n);
    memset(buf, 'x', rec);
    double c0 = cpu_us(), t0 = now_us();
    for (int i = 0; i < n; i++) {
        double a = now_us();
        if (pwrite(fd, buf, rec, (off_t)i * rec) != rec || fdatasync(fd)) { perror("write"); return 1; }
        lat[i] = now_us() - a;
    }
    double c1 = cpu_us(), t1 = now_us();
    stop = 1;
    if (argc > 4) pthread_join(bg, NULL);
    qsort(lat, n, sizeof(double), cmp);
    printf("%-9s %6ld B: CPU %.1f us/sync (whole process), wall %.1f us/sync, p50 %.0f p99 %.0f max %.0f us\n",
           mode, rec, (c1 - c0) / n, (t1 - t0) / n, lat[n / 2], lat[n * 99 / 100], lat[n - 1]);
    close(fd);
    unlink(path);
    return 0;
}
