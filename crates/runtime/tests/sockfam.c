/* Asks the kernel, from inside a sandbox, for a socket of every family and
   of every netlink protocol, and tries the i386 and x32 entry points; used
   by tests/runtime.rs. It only creates sockets and closes them: it never
   connects, binds or sends on one (an AF_VSOCK socket reaches the host's
   hypervisor). One line per attempt: "<what> ok" or "<what> errno <n>". */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void family(long fam) {
    int types[] = {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_RAW};
    int last = 0;
    for (unsigned i = 0; i < sizeof types / sizeof *types; i++) {
        long fd = syscall(SYS_socket, fam, types[i] | SOCK_CLOEXEC, 0);
        if (fd >= 0) { close(fd); printf("family %#lx ok\n", fam); return; }
        last = errno;
        /* A refusal by the filter is the same for every type. */
        if (last == EAFNOSUPPORT || last == EPERM) break;
    }
    printf("family %#lx errno %d\n", fam, last);
}

static void netlink(long protocol) {
    long fd = syscall(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd >= 0) { close(fd); printf("netlink %#lx ok\n", protocol); return; }
    printf("netlink %#lx errno %d\n", protocol, errno);
}

static void pair(long fam) {
    int sv[2];
    long r = syscall(SYS_socketpair, fam, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    if (r == 0) { close(sv[0]); close(sv[1]); printf("socketpair %#lx ok\n", fam); return; }
    printf("socketpair %#lx errno %d\n", fam, errno);
}

#ifdef __x86_64__
static unsigned int socketcall_args[3] = {40 /* AF_VSOCK */, SOCK_STREAM, 0};

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

/* Runs one foreign-entry attempt in a child, which the filter may kill. */
static void foreign(const char *what, int which) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long r;
        if (which == 0) r = int80(359 /* i386 socket */, 40, SOCK_STREAM, 0);
        else if (which == 1) r = int80(102 /* i386 socketcall */, 1 /* SYS_SOCKET */,
                                       (long)socketcall_args, 0);
        else r = syscall(0x40000000L | SYS_socket, 40, SOCK_STREAM, 0);
        if (which == 2 && r < 0) r = -errno;
        if (r >= 0) { printf("%s ok\n", what); fflush(stdout); _exit(0); }
        printf("%s errno %ld\n", what, -r);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) printf("%s signal %d\n", what, WTERMSIG(status));
}
#endif

int main(void) {
    for (long f = 0; f <= 47; f++) family(f);
    family(0x100000028L); /* AF_VSOCK with a bit above the 32 the kernel reads */
    family(0x100000002L); /* AF_INET likewise */
    for (long p = 0; p <= 23; p++) netlink(p);
    netlink(0x10000000fL); /* NETLINK_KOBJECT_UEVENT likewise */
    pair(1);
    pair(40);
#ifdef __x86_64__
    foreign("i386 socket", 0);
    foreign("i386 socketcall", 1);
    foreign("x32 socket", 2);
#endif
    return 0;
}
