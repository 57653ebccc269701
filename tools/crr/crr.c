/*
 * kpb-crr: a TCP connect-request-response-close generator and its responder, and
 * the same request/response on kept-alive connections (--keep).
 *
 *   kpb-crr serve  --listen IP:PORT [--listen IP:PORT ...] [--request B] [--response B]
 *                  [--delay-us US] [--duration S] [--keep]
 *   kpb-crr client --connect IP:PORT [--connect IP:PORT ...] [--bind IP] [--flows N]
 *                  [--count N] [--duration S]
 *                  [--rate TPS] [--request B] [--response B] [--timeout-ms MS]
 *                  [--samples FILE] [--records FILE] [--keep]
 *
 * A transaction is: connect(), write a request of B bytes, read a response of
 * B bytes, read the responder's FIN, close(). The responder accepts, reads the
 * whole request, writes the response and closes first, so its side, not the
 * client's, holds TIME_WAIT and the client's ports are free again at once. --delay-us holds each response that
 * long after its request is in (a backend's service time; also a known latency to
 * test the generator's clock against where the kernel has no netem).
 *
 * Transaction i goes to the (i mod n)-th of the n --connect destinations (a
 * direct path spread over several backends, as a Service spreads connections).
 * The client runs --flows threads. Closed loop (no --rate): each thread runs
 * transactions back to back. Open loop (--rate): transaction i is due at
 * start + i/rate; a free thread takes the next one, sleeps until it is due and
 * its latency is counted from when it was due, not from when it started, so a
 * generator that falls behind shows it as latency (no coordinated omission).
 * Both stop after --count transactions or --duration seconds, whichever comes
 * first; a transaction in flight is bounded by --timeout-ms.
 *
 * --keep (both sides; the tcp-rr workload): each flow opens ONE connection, to the
 * (flow mod n)-th destination, before the clock starts, and a transaction is only
 * write the request, read the response. The responder answers request after request
 * on a connection until the client's EOF. At the end the client closes its
 * connections (so it holds their TIME_WAIT: one port per flow, not per transaction). A
 * transaction that times out or fails closes its connection (a late response would
 * answer the next request); the flow's next transaction reconnects first, inside its
 * own timing, and a failed reconnect counts as connect_failed.
 *
 * Output (stdout, one line, key=value; the responder prints "ready" first and
 * its line when it gets SIGTERM/SIGINT or its --duration ends):
 *   crr-client transactions=N connect_failed=N timeouts=N errors=N seconds=F ...
 *   crr-server served=N errors=N connections=N
 * (served: responses written in full; connections: connections accepted.)
 * The client prints "running" when its clock starts (with --keep: once every flow
 * is connected).
 * --samples writes each successful transaction's latency in ns as a
 * little-endian uint32 (clamped at 2^32-1, i.e. 4.29 s), in completion order.
 * --records writes one record per transaction, in transaction (due) order, 24 bytes
 * little-endian (struct tx_record): due_ns (uint64, CLOCK_MONOTONIC: when it was due
 * in open loop, when it started in closed loop), rtt_ns (uint64: due to completion or
 * failure), status (uint16: 0 ok, 1 connect failed, 2 timeout, 3 error, 4 not
 * started), flags (uint16: 1 = it opened its flow's connection first, --keep's
 * reconnect), flow (uint32). Open loop, a transaction due before the run ended (its
 * --duration, or SIGTERM/SIGINT) that no flow started is recorded "not started"
 * (every flow was busy with an earlier one): a stall of the path shows as late or
 * failed transactions, never as transactions that silently were not there.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTEN 64
#define MAX_FLOWS 1024
#define MAX_BYTES (1 << 20)
#define MAX_COUNT 100000000L

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "kpb-crr: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long parse_long(const char *s, long lo, long hi, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        die("bad %s value", what);
    return v;
}

static double parse_double(const char *s, double lo, double hi, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        die("bad %s value", what);
    return v;
}

static void parse_addr(const char *s, struct sockaddr_in *sa, int need_port)
{
    char buf[64];
    if (strlen(s) >= sizeof buf)
        die("address too long: %s", s);
    strcpy(buf, s);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    char *colon = strrchr(buf, ':');
    if (colon) {
        *colon = 0;
        sa->sin_port = htons((uint16_t)parse_long(colon + 1, 1, 65535, "port"));
    } else if (need_port) {
        die("address needs IP:PORT: %s", s);
    }
    if (inet_pton(AF_INET, buf, &sa->sin_addr) != 1)
        die("not an IPv4 address: %s", s);
}

/* ---- responder ------------------------------------------------------------ */

struct conn {
    int fd;
    long got;
    uint64_t due; /* when the delayed response is due (0: not waiting) */
    struct conn *next; /* in the list of delayed responses */
};

static volatile sig_atomic_t stop_flag;
static volatile uint64_t stop_ns; /* when the signal came (clock_gettime is signal-safe) */
static uint64_t now_ns(void);
static void on_signal(int sig)
{
    (void)sig;
    if (!stop_flag)
        stop_ns = now_ns();
    stop_flag = 1;
}

static long served, serve_errors, accepted;

/* Write the whole response and count it: at once if the socket buffer takes it (the
 * usual case), else the rest as a bounded blocking send. Without --keep, or if the
 * write failed, close the connection and return 0; with --keep, return 1 with the
 * connection ready for its next request (non-blocking, nothing read of it yet). */
static int respond(struct conn *c, char *buf, long response, int keep)
{
    /* MSG_NOSIGNAL: a client gone (timed out) is an error to count, not a SIGPIPE. */
    ssize_t w = send(c->fd, buf, (size_t)response, MSG_NOSIGNAL);
    long off = w > 0 ? w : 0;
    if (off < response && (w >= 0 || errno == EAGAIN)) {
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
        struct timeval tv = {.tv_sec = 5};
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        while (off < response) {
            w = send(c->fd, buf, (size_t)(response - off), MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += w;
        }
        fcntl(c->fd, F_SETFL, fl);
    }
    if (off == response)
        served++;
    else
        serve_errors++;
    if (keep && off == response) {
        c->got = 0;
        c->due = 0;
        return 1;
    }
    close(c->fd); /* also removes it from the epoll set */
    free(c);
    return 0;
}

static void watch(int ep, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP};
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static int serve(int argc, char **argv)
{
    struct sockaddr_in addrs[MAX_LISTEN];
    int n_listen = 0;
    long request = 64, response = 64, delay_us = 0;
    int keep = 0;
    double duration = 3600;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--keep")) {
            keep = 1;
            continue;
        }
        if (!v)
            die("option %s needs a value", a);
        if (!strcmp(a, "--listen")) {
            if (n_listen == MAX_LISTEN)
                die("too many --listen (%s)", v);
            parse_addr(v, &addrs[n_listen++], 1);
        } else if (!strcmp(a, "--request"))
            request = parse_long(v, 1, MAX_BYTES, "--request");
        else if (!strcmp(a, "--response"))
            response = parse_long(v, 1, MAX_BYTES, "--response");
        else if (!strcmp(a, "--duration"))
            duration = parse_double(v, 0.001, 86400, "--duration");
        else if (!strcmp(a, "--delay-us"))
            delay_us = parse_long(v, 0, 10000000, "--delay-us");
        else
            die("unknown serve option %s", a);
        i++;
    }
    if (!n_listen)
        die("serve needs --listen IP:PORT%s", "");
    int ep = epoll_create1(0);
    for (int i = 0; i < n_listen; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&addrs[i], sizeof addrs[i]) || listen(fd, 4096)) {
            fprintf(stderr, "kpb-crr: cannot listen on %s:%d: %s\n",
                    inet_ntoa(addrs[i].sin_addr), ntohs(addrs[i].sin_port), strerror(errno));
            return 2;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        ev.data.u64 = (uint64_t)fd << 1 | 1; /* odd: a listener */
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char *buf = calloc(1, (size_t)(request > response ? request : response) + 65536);
    printf("ready\n");
    fflush(stdout);
    uint64_t end = now_ns() + (uint64_t)(duration * 1e9);
    struct conn *delayed = NULL; /* responses waiting for their due time */
    struct epoll_event evs[256];
    while (!stop_flag && now_ns() < end) {
        /* Sleep until the next due response (ns-precise: epoll_pwait2), at most 100 ms. */
        uint64_t t = now_ns(), wait = 100000000ull;
        for (struct conn *c = delayed; c; c = c->next)
            if (c->due <= t)
                wait = 0;
            else if (c->due - t < wait)
                wait = c->due - t;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull),
                              .tv_nsec = (long)(wait % 1000000000ull)};
        int n = epoll_pwait2(ep, evs, 256, &ts, NULL);
        for (int i = 0; i < n; i++) {
            uint64_t d = evs[i].data.u64;
            if (d & 1) {
                int lfd = (int)(d >> 1);
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (cfd < 0)
                        break;
                    int one = 1;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = cfd;
                    accepted++;
                    watch(ep, c);
                }
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            if (c->due)
                continue; /* request complete, response pending */
            for (;;) {
                ssize_t r = read(c->fd, buf, (size_t)(request - c->got));
                if (r > 0) {
                    c->got += r;
                    if (c->got < request)
                        continue;
                    if (delay_us) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        c->due = now_ns() + (uint64_t)delay_us * 1000ull;
                        c->next = delayed;
                        delayed = c;
                    } else {
                        respond(c, buf, response, keep); /* kept: still watched */
                    }
                } else if (r == 0 && keep && c->got == 0) {
                    close(c->fd); /* --keep: the client's EOF between requests */
                    free(c);
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    serve_errors++; /* closed or reset before the whole request came */
                    close(c->fd);
                    free(c);
                }
                break;
            }
        }
        t = now_ns();
        for (struct conn **pp = &delayed; *pp;) {
            struct conn *c = *pp;
            if (c->due <= t) {
                *pp = c->next;
                if (respond(c, buf, response, keep))
                    watch(ep, c); /* taken out of the set while its response waited */
            } else {
                pp = &c->next;
            }
        }
    }
    printf("crr-server served=%ld errors=%ld connections=%ld\n", served, serve_errors,
           accepted);
    fflush(stdout);
    return 0;
}

/* ---- generator ------------------------------------------------------------ */

#define MAX_DSTS 64

struct client_cfg {
    struct sockaddr_in dst[MAX_DSTS], src;
    int n_dst, bind_src, keep;
    long request, response, count, timeout_ms;
    double rate;
    uint64_t start, end;
};

static struct client_cfg cfg;
static pthread_barrier_t connected, go;
static atomic_long next_tx, n_ok, n_connect_failed, n_timeouts, n_errors;
static uint32_t *samples;

enum { TX_OK, TX_CONNECT_FAILED, TX_TIMEOUT, TX_ERROR, TX_NOT_STARTED };
#define TX_NONE 0xffff /* a record no transaction wrote */
#define TX_RECONNECTED 1 /* flags: the transaction opened its flow's connection first */

struct tx_record {
    uint64_t due_ns, rtt_ns;
    uint16_t status, flags;
    uint32_t flow;
};
_Static_assert(sizeof(struct tx_record) == 24, "--records' layout is 24 bytes");
static struct tx_record *records;

/* Wait for fd to be ready for `events` until deadline (ns); 1 ready, 0 timeout. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t t = now_ns();
        if (t >= deadline)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int ms = (int)((deadline - t + 999999) / 1000000);
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Open a connection to dst (bound to --bind's address if given) by deadline (ns):
 * TX_OK with *fdp set, or why not (*fdp -1). */
static int open_conn(int *fdp, const struct sockaddr_in *dst, uint64_t deadline)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    *fdp = -1;
    if (fd < 0)
        return TX_ERROR;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg.bind_src) {
        /* Port chosen at connect(), per destination, as without bind(). */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&cfg.src, sizeof cfg.src)) {
            close(fd);
            return TX_CONNECT_FAILED;
        }
    }
    int rc = TX_OK;
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) && errno != EINPROGRESS) {
        rc = TX_CONNECT_FAILED;
    } else {
        int w = wait_fd(fd, POLLOUT, deadline);
        if (w <= 0) {
            rc = w == 0 ? TX_CONNECT_FAILED : TX_ERROR;
        } else {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err)
                rc = TX_CONNECT_FAILED;
        }
    }
    if (rc == TX_OK)
        *fdp = fd;
    else
        close(fd);
    return rc;
}

/* Write the whole request and read the whole response on fd by deadline. */
static int exchange(int fd, char *buf, uint64_t deadline)
{
    int w;
    long off = 0;
    while (off < cfg.request) {
        ssize_t r = write(fd, buf, (size_t)(cfg.request - off));
        if (r > 0) {
            off += r;
        } else if (r < 0 && errno == EAGAIN) {
            if ((w = wait_fd(fd, POLLOUT, deadline)) <= 0)
                return w == 0 ? TX_TIMEOUT : TX_ERROR;
        } else {
            return TX_ERROR;
        }
    }
    off = 0;
    while (off < cfg.response) {
        ssize_t r = read(fd, buf, (size_t)(cfg.response - off));
        if (r > 0) {
            off += r;
        } else if (r < 0 && errno == EAGAIN) {
            if ((w = wait_fd(fd, POLLIN, deadline)) <= 0)
                return w == 0 ? TX_TIMEOUT : TX_ERROR;
        } else {
            return TX_ERROR; /* reset, or closed before the whole response */
        }
    }
    return TX_OK;
}

/* Read until the responder's FIN by deadline: TX_OK, or why not. */
static int await_fin(int fd, char *buf, uint64_t deadline)
{
    for (;;) {
        ssize_t r = read(fd, buf, 1);
        if (r == 0)
            return TX_OK;
        if (r < 0 && errno == EAGAIN) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w <= 0)
                return w == 0 ? TX_TIMEOUT : TX_ERROR;
            continue;
        }
        return TX_ERROR; /* more than the response, or a reset */
    }
}

static uint64_t deadline_from_now(void)
{
    return now_ns() + (uint64_t)cfg.timeout_ms * 1000000ull;
}

/* One connect-request-response-close transaction. */
static int transaction(char *buf, long i)
{
    uint64_t deadline = deadline_from_now();
    int fd, rc = open_conn(&fd, &cfg.dst[i % cfg.n_dst], deadline);
    if (rc != TX_OK)
        return rc;
    rc = exchange(fd, buf, deadline);
    /* Wait for the responder's FIN before closing: the side that closes first holds
     * TIME_WAIT for 60 s, and on the client that would use up its ephemeral ports
     * within seconds at the rates measured here. */
    if (rc == TX_OK)
        rc = await_fin(fd, buf, deadline);
    close(fd);
    return rc;
}

/* One request/response on the flow's kept connection *fdp (--keep), opening it first
 * if it is closed; a failed transaction leaves it closed. */
static int keep_transaction(char *buf, int *fdp, const struct sockaddr_in *dst,
                            uint16_t *flags)
{
    uint64_t deadline = deadline_from_now();
    if (*fdp < 0)
        *flags |= TX_RECONNECTED;
    int rc = *fdp < 0 ? open_conn(fdp, dst, deadline) : TX_OK;
    if (rc != TX_OK)
        return rc;
    rc = exchange(*fdp, buf, deadline);
    if (rc != TX_OK) {
        close(*fdp);
        *fdp = -1;
    }
    return rc;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull),
                          .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *flow(void *arg)
{
    long index = (long)(intptr_t)arg;
    const struct sockaddr_in *dst = &cfg.dst[index % cfg.n_dst];
    char *buf = calloc(1, (size_t)(cfg.request > cfg.response ? cfg.request : cfg.response));
    int fd = -1;
    /* --keep: connected before the clock starts; if that fails, the first transaction
     * reconnects (and counts its failure). */
    if (cfg.keep) {
        open_conn(&fd, dst, deadline_from_now());
        pthread_barrier_wait(&connected);
        pthread_barrier_wait(&go); /* cfg.start and cfg.end set */
    }
    for (;;) {
        long i = atomic_fetch_add(&next_tx, 1);
        if (i >= cfg.count || stop_flag)
            break;
        uint64_t due = now_ns();
        if (cfg.rate > 0) {
            due = cfg.start + (uint64_t)((double)i * 1e9 / cfg.rate);
            if (due >= cfg.end)
                break;
            sleep_until(due);
        } else if (due >= cfg.end) {
            break;
        }
        uint16_t flags = 0;
        int rc = cfg.keep ? keep_transaction(buf, &fd, dst, &flags) : transaction(buf, i);
        uint64_t lat = now_ns() - due;
        if (records)
            records[i] = (struct tx_record){.due_ns = due, .rtt_ns = lat,
                                            .status = (uint16_t)rc, .flags = flags,
                                            .flow = (uint32_t)index};
        if (rc == TX_OK) {
            long slot = atomic_fetch_add(&n_ok, 1);
            samples[slot] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
        } else if (rc == TX_CONNECT_FAILED) {
            atomic_fetch_add(&n_connect_failed, 1);
        } else if (rc == TX_TIMEOUT) {
            atomic_fetch_add(&n_timeouts, 1);
        } else {
            atomic_fetch_add(&n_errors, 1);
        }
    }
    if (fd >= 0) /* --keep */
        close(fd);
    free(buf);
    return NULL;
}

/* --records: every transaction run, and (open loop) every one due before the run ended
 * that none started, in transaction order. */
static void write_records(const char *path)
{
    uint64_t ended = stop_flag && stop_ns < cfg.end ? stop_ns : cfg.end;
    FILE *f = fopen(path, "wb");
    if (!f)
        die("cannot write %s", path);
    for (long i = 0; i < cfg.count; i++) {
        struct tx_record r = records[i];
        if (r.status == TX_NONE) {
            if (cfg.rate <= 0)
                continue;
            r.due_ns = cfg.start + (uint64_t)((double)i * 1e9 / cfg.rate);
            if (r.due_ns >= ended)
                continue; /* due later: never part of the run */
            r = (struct tx_record){.due_ns = r.due_ns, .status = TX_NOT_STARTED,
                                   .flow = UINT32_MAX};
        }
        if (fwrite(&r, sizeof r, 1, f) != 1)
            die("cannot write %s", path);
    }
    if (fclose(f))
        die("cannot write %s", path);
}

static int client(int argc, char **argv)
{
    long flows = 1;
    double duration = 10;
    const char *samples_path = NULL, *records_path = NULL;
    int have_dst = 0;
    cfg.request = cfg.response = 64;
    cfg.count = 1000000;
    cfg.timeout_ms = 2000;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--keep")) {
            cfg.keep = 1;
            continue;
        }
        if (!v)
            die("option %s needs a value", a);
        if (!strcmp(a, "--connect")) {
            if (cfg.n_dst == MAX_DSTS)
                die("at most 64 --connect destinations%s", "");
            parse_addr(v, &cfg.dst[cfg.n_dst++], 1);
            have_dst = 1;
        } else if (!strcmp(a, "--bind")) {
            parse_addr(v, &cfg.src, 0);
            cfg.src.sin_port = 0;
            cfg.bind_src = 1;
        } else if (!strcmp(a, "--flows"))
            flows = parse_long(v, 1, MAX_FLOWS, "--flows");
        else if (!strcmp(a, "--count"))
            cfg.count = parse_long(v, 1, MAX_COUNT, "--count");
        else if (!strcmp(a, "--duration"))
            duration = parse_double(v, 0.001, 86400, "--duration");
        else if (!strcmp(a, "--rate"))
            cfg.rate = parse_double(v, 0.001, 1e8, "--rate");
        else if (!strcmp(a, "--request"))
            cfg.request = parse_long(v, 1, MAX_BYTES, "--request");
        else if (!strcmp(a, "--response"))
            cfg.response = parse_long(v, 1, MAX_BYTES, "--response");
        else if (!strcmp(a, "--timeout-ms"))
            cfg.timeout_ms = parse_long(v, 1, 600000, "--timeout-ms");
        else if (!strcmp(a, "--samples"))
            samples_path = v;
        else if (!strcmp(a, "--records"))
            records_path = v;
        else
            die("unknown client option %s", a);
        i++;
    }
    if (!have_dst)
        die("client needs --connect IP:PORT%s", "");
    samples = malloc((size_t)cfg.count * sizeof *samples);
    if (!samples)
        die("cannot allocate the samples of --count%s", "");
    if (records_path) {
        records = malloc((size_t)cfg.count * sizeof *records);
        if (!records)
            die("cannot allocate the records of --count%s", "");
        for (long i = 0; i < cfg.count; i++)
            records[i].status = TX_NONE;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_t th[MAX_FLOWS];
    /* Without --keep the clock starts before the flows; with it, once all are connected. */
    cfg.start = now_ns();
    cfg.end = cfg.start + (uint64_t)(duration * 1e9);
    if (cfg.keep) {
        pthread_barrier_init(&connected, NULL, (unsigned)flows + 1);
        pthread_barrier_init(&go, NULL, (unsigned)flows + 1);
    }
    for (long i = 0; i < flows; i++)
        if (pthread_create(&th[i], NULL, flow, (void *)(intptr_t)i))
            die("cannot start a flow thread%s", "");
    if (cfg.keep) {
        pthread_barrier_wait(&connected);
        cfg.start = now_ns();
        cfg.end = cfg.start + (uint64_t)(duration * 1e9);
    }
    printf("running\n");
    fflush(stdout);
    if (cfg.keep)
        pthread_barrier_wait(&go);
    for (long i = 0; i < flows; i++)
        pthread_join(th[i], NULL);
    double seconds = (double)(now_ns() - cfg.start) / 1e9;
    long ok = atomic_load(&n_ok);
    if (samples_path) {
        FILE *f = fopen(samples_path, "wb");
        if (!f || fwrite(samples, sizeof *samples, (size_t)ok, f) != (size_t)ok || fclose(f))
            die("cannot write %s", samples_path);
    }
    if (records_path)
        write_records(records_path);
    printf("crr-client transactions=%ld connect_failed=%ld timeouts=%ld errors=%ld "
           "seconds=%.6f flows=%ld loop=%s rate=%.3f\n",
           ok, atomic_load(&n_connect_failed), atomic_load(&n_timeouts),
           atomic_load(&n_errors), seconds, flows, cfg.rate > 0 ? "open" : "closed", cfg.rate);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return serve(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "client"))
        return client(argc - 2, argv + 2);
    fprintf(stderr, "usage: kpb-crr serve --listen IP:PORT ... | "
                    "kpb-crr client --connect IP:PORT [options] (see tools/crr/crr.c)\n");
    return 2;
}
