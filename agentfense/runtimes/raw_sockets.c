/* raw_sockets.c: the seccomp filter that hands a sandbox's attempts to open a raw or packet
 * socket to the server, which logs each one and refuses it.
 *
 * No process of a sandbox has CAP_NET_RAW, so the kernel refuses such a socket anyway
 * (EPERM), before it sends anything: without this filter, nothing of the attempt would reach
 * the server's proxy, and the sandbox's network log would not say it happened. With it,
 * socket() of AF_PACKET, or of AF_INET or AF_INET6 with SOCK_RAW (or the obsolete
 * SOCK_PACKET), waits for the server (SECCOMP_RET_USER_NOTIF), which answers EPERM. Every
 * other call, and a socket of another kind, passes on to the sandbox's own filter.
 *
 * The filter is loaded with a listener (SECCOMP_FILTER_FLAG_NEW_LISTENER), which the helper
 * gives to the server: the launcher over a socket (bwrap), confine at a fixed fd that the
 * server takes with pidfd_getfd (Docker). A chain of filters holds one listener at most, so
 * while the server keeps this one, nothing in the sandbox loads a listener of its own.
 * Calls of x86_64 (x32 too) and aarch64 are seen, and those of the 32-bit arch each runs
 * (i386, arm: Docker's profile allows them). i386's socketcall() keeps its arguments in
 * memory, where a filter cannot look: it is refused by the kernel as before, unlogged.
 * Included after landlock.c (whose includes it uses).
 */

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/socket.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define NATIVE_SOCKET 41
#define NATIVE_SOCKET_TOO (0x40000000 + 41) /* x32's: the same arch, a bit in the number */
#define COMPAT_ARCH AUDIT_ARCH_I386
#define COMPAT_SOCKET 359
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#define NATIVE_SOCKET 198
#define NATIVE_SOCKET_TOO 198
#define COMPAT_ARCH AUDIT_ARCH_ARM
#define COMPAT_SOCKET 281
#else
#error "raw_sockets.c knows the system calls of x86_64 and aarch64 only"
#endif

#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define IF(value, then, otherwise) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (value), then, otherwise)

/* Load the filter; its listener's fd (-1 and errno when the kernel refuses). */
static int watch_raw_sockets(void)
{
    /* (a jump counts the instructions it skips; an argument's low half comes first) */
    struct sock_filter program[] = {
        /* 0 */ LOAD(arch),
        /* 1 */ IF(COMPAT_ARCH, 4, 0),
        /* 2 */ IF(NATIVE_ARCH, 0, 13),
        /* 3 */ LOAD(nr),
        /* 4 */ IF(NATIVE_SOCKET, 3, 0),
        /* 5 */ IF(NATIVE_SOCKET_TOO, 2, 10),
        /* 6 */ LOAD(nr),
        /* 7 */ IF(COMPAT_SOCKET, 0, 8),
        /* 8: socket(DOMAIN, TYPE, PROTOCOL) */ LOAD(args[0]),
        /* 9 */ IF(AF_PACKET, 7, 0),
        /* 10 */ IF(AF_INET, 1, 0),
        /* 11 */ IF(AF_INET6, 0, 4),
        /* 12 */ LOAD(args[1]),
        /* 13: the type, without its flags */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf),
        /* 14 */ IF(SOCK_RAW, 2, 0),
        /* 15 */ IF(SOCK_PACKET, 1, 0),
        /* 16 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 17 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof program / sizeof program[0]), program};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                        &prog);
}

#undef LOAD
#undef IF
