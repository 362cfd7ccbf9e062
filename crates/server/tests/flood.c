/* Bounded floods for crates/server/tests/shares.rs, built static and put
 * in the sandboxes' snapshot (busybox cannot open connections this fast).
 * Lab addresses only; every mode stops by itself.
 *
 *   flood hold ADDR PORT N MS   N TCP connects at once, held MS ms
 *   flood churn ADDR PORT N     N TCP connects one after another, each
 *                               closed at once
 *   flood udp ADDR PORT N       N datagrams, each from a socket (a port,
 *                               a tracked connection) of its own
 *
 * Prints "open X refused Y other Z" (a refusal is a reset: ECONNREFUSED),
 * or "sent N". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in to;

static int connect_one(int wait_ms) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s < 0) return -1;
    connect(s, (struct sockaddr *)&to, sizeof to);
    struct pollfd p = {s, POLLOUT, 0};
    if (poll(&p, 1, wait_ms) != 1) { close(s); return -2; }
    int err = 0; socklen_t len = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == ECONNREFUSED) { close(s); return -3; }
    if (err) { close(s); return -2; }
    return s;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: flood MODE ADDR PORT N [MS]\n"); return 2; }
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) return 2;
    long n = atol(argv[4]);
    if (n < 0 || n > 100000) return 2;
    long open_ = 0, refused = 0, other = 0;
    if (!strcmp(argv[1], "hold")) {
        long ms = argc > 5 ? atol(argv[5]) : 1000;
        int *held = calloc(n, sizeof *held);
        for (long i = 0; i < n; i++) {
            int s = connect_one(2000);
            if (s >= 0) { held[open_++] = s; }
            else if (s == -3) refused++;
            else other++;
        }
        printf("open %ld refused %ld other %ld\n", open_, refused, other);
        fflush(stdout);
        usleep(ms * 1000);
        for (long i = 0; i < open_; i++) close(held[i]);
    } else if (!strcmp(argv[1], "churn")) {
        for (long i = 0; i < n; i++) {
            int s = connect_one(1000);
            if (s >= 0) { open_++; close(s); }
            else if (s == -3) refused++;
            else other++;
        }
        printf("open %ld refused %ld other %ld\n", open_, refused, other);
    } else if (!strcmp(argv[1], "udp")) {
        long sent = 0;
        for (long i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_DGRAM, 0);
            if (s < 0) continue;
            if (sendto(s, "x", 1, 0, (struct sockaddr *)&to, sizeof to) == 1) sent++;
            close(s);
        }
        printf("sent %ld\n", sent);
    } else {
        return 2;
    }
    return 0;
}
