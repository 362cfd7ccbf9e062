/* Tries, from inside a sandbox, the system calls that make namespaces or
   escape system-call filtering; used by tests/runtime.rs. */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
int main(void) {
    long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) { waitpid(r, 0, 0); printf("clone newuser: allowed\n"); }
    else printf("clone newuser: errno %d\n", errno);
    r = syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) { waitpid(r, 0, 0); printf("clone newnet: allowed\n"); }
    else printf("clone newnet: errno %d\n", errno);
    r = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) { waitpid(r, 0, 0); printf("clone plain: allowed\n"); }
    else printf("clone plain: errno %d\n", errno);
    r = syscall(435 /* clone3 */, 0, 0);
    printf("clone3: errno %d\n", r < 0 ? errno : 0);
    r = syscall(425 /* io_uring_setup */, 1, 0);
    printf("io_uring_setup: errno %d\n", r < 0 ? errno : 0);
    return 0;
}
