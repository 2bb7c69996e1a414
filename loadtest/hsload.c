/*
 * hsload: TLS handshake load generator for loadtest/bench.py (--workload handshake).
 *
 * Keeps C connections busy for D seconds; each one does TCP connect -> full TLS
 * handshake -> one "GET path" with "Connection: close" -> reads the whole
 * response -> closes, then starts over on a fresh SSL object.  It exists because
 * wrk resumes TLS sessions when it reconnects (it keeps the SSL object and its
 * session across SSL_clear), so wrk with "Connection: close" measures resumed
 * handshakes, not new ones.  Here nothing is ever resumed: the client session
 * cache is off, no session is ever set on an SSL object, and every completed
 * connection is checked with SSL_session_reused() -- a non-zero "resumed" count
 * in the output means the measurement is wrong.
 *
 * Certificates are not verified (like wrk), and the chain is not even built
 * (OpenSSL builds it under SSL_VERIFY_NONE too): on one shared core the client
 * is the bottleneck, and chain work measures nothing about the server.  The
 * server still signs every handshake and the client still checks that
 * signature, as TLS requires.
 *
 * Build: cc -O2 -o hsload hsload.c -lssl -lcrypto
 * Usage: hsload -p PORT -P PATH -H HOST [-c CONNS] [-d SECONDS] [-s SNI] [-t TIMEOUT]
 * Prints one JSON object on stdout; exit status 2 on bad usage, 1 on setup failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, HANDSHAKE, WRITING, READING };

struct conn {
    int fd;
    SSL *ssl;
    enum phase phase;
    uint64_t started_ns;
    size_t sent, got;
    int connect_errno;         /* connect() failed at once: reported from the loop */
    int headers_done, to_eof;  /* to_eof: no Content-Length, the response ends at EOF */
    long body_left;
    int status_ok;
    char head[2048];           /* response bytes until the end of headers */
    size_t head_len;
};

struct counts {
    uint64_t done, connect_err, handshake_err, io_err, status_err, timeout, resumed;
    uint64_t version_mismatch;
};

static struct sockaddr_in addr;
static SSL_CTX *ctx;
static const char *sni;
static char request[1024];
static size_t request_len;
static int epfd;
static struct counts cnt;
static uint32_t *lat_us;
static size_t lat_len, lat_cap;
static char version[32], cipher[64];
static uint64_t window_start, window_end;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, op, c->fd, &ev);
}

static void start(struct conn *c);

static void finish(struct conn *c, uint64_t *error_counter) {
    uint64_t t = now_ns();
    /* Only work that ends inside the window counts; warm-up and drain do not. */
    if (t >= window_start && t <= window_end) {
        if (error_counter != NULL) {
            (*error_counter)++;
        } else {
            cnt.done++;
            if (SSL_session_reused(c->ssl)) cnt.resumed++;
            const char *v = SSL_get_version(c->ssl);
            if (version[0] == '\0') {
                snprintf(version, sizeof version, "%s", v);
                snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(c->ssl));
            } else if (strcmp(version, v) != 0) {
                cnt.version_mismatch++;
            }
            if (lat_len == lat_cap) {
                lat_cap = lat_cap ? lat_cap * 2 : 65536;
                lat_us = realloc(lat_us, lat_cap * sizeof *lat_us);
                if (lat_us == NULL) { perror("realloc"); exit(1); }
            }
            uint64_t us = (t - c->started_ns) / 1000;
            lat_us[lat_len++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        }
    }
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);          /* also removes it from the epoll set */
    c->fd = -1;
    if (t < window_end) start(c);
}

static void start(struct conn *c) {
    c->phase = CONNECTING;
    c->sent = c->got = c->head_len = 0;
    c->headers_done = c->to_eof = c->connect_errno = 0;
    c->body_left = 0;
    c->status_ok = 0;
    c->started_ns = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd)) { fprintf(stderr, "SSL_new failed\n"); exit(1); }
    if (sni && *sni) SSL_set_tlsext_host_name(c->ssl, sni);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        c->phase = HANDSHAKE;
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    } else if (errno == EINPROGRESS) {
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    } else {
        /* Finishing here would recurse into start(); let the loop see it instead. */
        c->connect_errno = errno;
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    }
}

/* Wait for whatever OpenSSL asked for; any other outcome ends the connection. */
static int wants(struct conn *c, int rc, uint64_t *error_counter) {
    int err = SSL_get_error(c->ssl, rc);
    if (err == SSL_ERROR_WANT_READ) { watch(c, EPOLLIN, EPOLL_CTL_MOD); return 1; }
    if (err == SSL_ERROR_WANT_WRITE) { watch(c, EPOLLOUT, EPOLL_CTL_MOD); return 1; }
    ERR_clear_error();
    finish(c, error_counter);
    return 0;
}

/* Headers are kept until "\r\n\r\n"; after that only the byte count matters. */
static void take(struct conn *c, const char *buf, size_t n) {
    if (c->headers_done) { c->body_left -= (long)n; return; }
    size_t room = sizeof c->head - 1 - c->head_len;
    size_t k = n < room ? n : room;
    memcpy(c->head + c->head_len, buf, k);
    c->head_len += k;
    c->head[c->head_len] = '\0';
    char *end = strstr(c->head, "\r\n\r\n");
    if (end == NULL) return;
    c->headers_done = 1;
    c->status_ok = strncmp(c->head, "HTTP/1.1 200", 12) == 0 || strncmp(c->head, "HTTP/1.0 200", 12) == 0;
    size_t header_bytes = (size_t)(end + 4 - c->head);
    c->to_eof = 1;
    for (char *line = strstr(c->head, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) {
            c->to_eof = 0;
            c->body_left = atol(line + 17) - (long)(c->head_len - header_bytes) - (long)(n - k);
            break;
        }
    }
}

static void step(struct conn *c) {
    int rc;
    if (c->phase == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (c->connect_errno != 0 || err != 0) { finish(c, &cnt.connect_err); return; }
        c->phase = HANDSHAKE;
    }
    if (c->phase == HANDSHAKE) {
        if ((rc = SSL_connect(c->ssl)) != 1) { wants(c, rc, &cnt.handshake_err); return; }
        c->phase = WRITING;
    }
    if (c->phase == WRITING) {
        while (c->sent < request_len) {
            if ((rc = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent))) <= 0) {
                wants(c, rc, &cnt.io_err);
                return;
            }
            c->sent += (size_t)rc;
        }
        c->phase = READING;
    }
    char buf[16384];
    for (;;) {
        rc = SSL_read(c->ssl, buf, sizeof buf);
        if (rc > 0) {
            take(c, buf, (size_t)rc);
            if (c->headers_done && !c->to_eof && c->body_left <= 0) {
                finish(c, c->status_ok ? NULL : &cnt.status_err);
                return;
            }
            continue;
        }
        int err = SSL_get_error(c->ssl, rc);
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && errno == 0)) {
            /* Server closed: complete only if the response was (to EOF or by length). */
            int complete = c->headers_done && (c->to_eof || c->body_left <= 0);
            ERR_clear_error();
            finish(c, !complete ? &cnt.io_err : (c->status_ok ? NULL : &cnt.status_err));
            return;
        }
        wants(c, rc, &cnt.io_err);
        return;
    }
}

/* Replaces X509_verify_cert: the chain is neither built nor checked. */
static int skip_chain(X509_STORE_CTX *store, void *arg) {
    (void)store;
    (void)arg;
    return 1;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (lat_len == 0) return 0;
    size_t i = (size_t)(p / 100.0 * (double)(lat_len - 1) + 0.5);
    return lat_us[i];
}

static void usage(void) {
    fprintf(stderr, "usage: hsload -p PORT -P PATH -H HOST [-c CONNS] [-d SECONDS] [-s SNI] [-t TIMEOUT]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int conns = 50, seconds = 10, port = 0, timeout_s = 10;
    const char *path = NULL, *host = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "c:d:p:P:H:s:t:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 'p': port = atoi(optarg); break;
        case 'P': path = optarg; break;
        case 'H': host = optarg; break;
        case 's': sni = optarg; break;
        case 't': timeout_s = atoi(optarg); break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || !path || !host || conns < 1 || conns > 10000 || seconds < 1
        || timeout_s < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);

    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    if (n <= 0 || (size_t)n >= sizeof request) usage();
    request_len = (size_t)n;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) { fprintf(stderr, "SSL_CTX_new failed\n"); return 1; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, skip_chain, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct conn *all = calloc((size_t)conns, sizeof *all);
    struct epoll_event *events = calloc((size_t)conns, sizeof *events);
    if (epfd < 0 || !all || !events) { perror("setup"); return 1; }

    window_start = now_ns();
    window_end = window_start + (uint64_t)seconds * 1000000000ull;
    for (int i = 0; i < conns; i++) start(&all[i]);
    uint64_t timeout_ns = (uint64_t)timeout_s * 1000000000ull;
    uint64_t next_sweep = window_start + 100000000ull;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= window_end) break;
        int wait_ms = (int)((window_end - t) / 1000000) + 1;
        if (wait_ms > 100) wait_ms = 100;
        int ready = epoll_wait(epfd, events, conns, wait_ms);
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd >= 0) step(c);
        }
        t = now_ns();
        if (t >= next_sweep) {         /* a stuck connection must not hide forever */
            next_sweep = t + 100000000ull;
            for (int i = 0; i < conns; i++)
                if (all[i].fd >= 0 && t - all[i].started_ns > timeout_ns) finish(&all[i], &cnt.timeout);
        }
    }
    double elapsed = (double)(window_end - window_start) / 1e9;
    qsort(lat_us, lat_len, sizeof *lat_us, cmp_u32);
    printf("{\"completed\": %llu, \"seconds\": %.3f, \"per_sec\": %.2f, "
           "\"latency_us\": {\"p50\": %.0f, \"p75\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"max\": %.0f}, "
           "\"errors\": {\"connect\": %llu, \"handshake\": %llu, \"io\": %llu, \"status\": %llu, "
           "\"timeout\": %llu}, \"resumed\": %llu, \"tls_version\": \"%s\", \"cipher\": \"%s\", "
           "\"version_mismatch\": %llu, \"connections\": %d}\n",
           (unsigned long long)cnt.done, elapsed, (double)cnt.done / elapsed,
           pct(50), pct(75), pct(90), pct(99), lat_len ? (double)lat_us[lat_len - 1] : 0.0,
           (unsigned long long)cnt.connect_err, (unsigned long long)cnt.handshake_err,
           (unsigned long long)cnt.io_err, (unsigned long long)cnt.status_err,
           (unsigned long long)cnt.timeout, (unsigned long long)cnt.resumed, version, cipher,
           (unsigned long long)cnt.version_mismatch, conns);
    return 0;
}
