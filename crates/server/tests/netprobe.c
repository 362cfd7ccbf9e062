/* A tiny probe for crates/server/tests/escapes.rs, built static and put in
 * the sandboxes' snapshot: busybox's nc has no UDP, no broadcast and no
 * IPv6 scope ids.
 *
 *   netprobe [-b] [-t] [-s SIZE] [-w MS] ADDR[%IFNAME] PORT
 *
 * UDP (default): sends one datagram (SIZE bytes of 'x', or standard input)
 * to ADDR PORT and prints "sent N" (or "send: errno E"), then waits MS
 * milliseconds (1000) for an answer and prints "reply N" and its bytes in
 * hexadecimal ("hex: 00 1d ..."), or "no reply". -b sets SO_BROADCAST.
 * With %IFNAME (IPv6), the datagram leaves by that interface (scope id and
 * IPV6_MULTICAST_IF).
 *
 * -t: a TCP connect instead, with a timeout of MS: prints "connected",
 * "refused" or "no connection: errno E".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned char buf[65536];

int main(int argc, char **argv) {
    int broadcast = 0, tcp = 0, opt;
    long size = -1, wait_ms = 1000;
    while ((opt = getopt(argc, argv, "bts:w:")) != -1) {
        switch (opt) {
        case 'b': broadcast = 1; break;
        case 't': tcp = 1; break;
        case 's': size = atol(optarg); break;
        case 'w': wait_ms = atol(optarg); break;
        default: return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: netprobe [-b] [-t] [-s SIZE] [-w MS] ADDR[%%IF] PORT\n");
        return 2;
    }
    char host[128];
    snprintf(host, sizeof host, "%s", argv[optind]);
    int port = atoi(argv[optind + 1]);
    unsigned ifindex = 0;
    char *pct = strchr(host, '%');
    if (pct) {
        *pct = 0;
        ifindex = if_nametoindex(pct + 1);
    }
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        len = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        s6->sin6_scope_id = ifindex;
        len = sizeof *s6;
    } else {
        fprintf(stderr, "bad address %s\n", host);
        return 2;
    }
    int fd = socket(ss.ss_family, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
    if (fd < 0) {
        printf("socket: errno %d\n", errno);
        return 1;
    }
    struct pollfd p = {.fd = fd};
    if (tcp) {
        fcntl(fd, F_SETFL, O_NONBLOCK);
        if (connect(fd, (struct sockaddr *)&ss, len) == 0) {
            printf("connected\n");
            return 0;
        }
        if (errno != EINPROGRESS) {
            printf("no connection: errno %d\n", errno);
            return 1;
        }
        p.events = POLLOUT;
        if (poll(&p, 1, wait_ms) != 1) {
            printf("no connection: timeout\n");
            return 1;
        }
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err == 0)
            printf("connected\n");
        else if (err == ECONNREFUSED)
            printf("refused\n");
        else
            printf("no connection: errno %d\n", err);
        return 0;
    }
    if (broadcast) {
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) != 0)
            printf("SO_BROADCAST: errno %d\n", errno);
    }
    if (ss.ss_family == AF_INET6 && ifindex)
        setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &ifindex, sizeof ifindex);
    ssize_t n;
    if (size >= 0) {
        if (size > (long)sizeof buf)
            size = sizeof buf;
        memset(buf, 'x', size);
        n = size;
    } else {
        n = 0;
        ssize_t r;
        while (n < (ssize_t)sizeof buf && (r = read(0, buf + n, sizeof buf - n)) > 0)
            n += r;
    }
    if (sendto(fd, buf, n, 0, (struct sockaddr *)&ss, len) != n) {
        printf("send: errno %d\n", errno);
        return 1;
    }
    printf("sent %zd\n", n);
    fflush(stdout);
    p.events = POLLIN;
    if (poll(&p, 1, wait_ms) != 1) {
        printf("no reply\n");
        return 0;
    }
    n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
        printf("recv: errno %d\n", errno);
        return 0;
    }
    printf("reply %zd\nhex:", n);
    for (ssize_t i = 0; i < n && i < 512; i++)
        printf(" %02x", buf[i]);
    printf("\n");
    return 0;
}
