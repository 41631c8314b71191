/* attach: mount SOURCE (a host path: a FUSE view, a directory) at TARGET inside a held mount
 * namespace, after the fact, with no process of the sandbox's running:
 *
 *   attach MNTNS SOURCE TARGET
 *
 * open_tree(OPEN_TREE_CLONE) makes a detached copy of SOURCE's mount while we still see the
 * host's tree; setns() into the sandbox's mount namespace; move_mount() attaches the copy
 * there. (A path-based bind cannot: after setns the host's path is gone.) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

int main(int argc, char **argv)
{
    if (argc != 4) {
        fputs("usage: attach MNTNS SOURCE TARGET\n", stderr);
        return 2;
    }
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, argv[2], OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0) {
        fprintf(stderr, "attach: cannot clone %s: %s.\n", argv[2], strerror(errno));
        return 1;
    }
    int ns = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNS) != 0) {
        fprintf(stderr, "attach: cannot enter %s: %s.\n", argv[1], strerror(errno));
        return 1;
    }
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, argv[3], MOVE_MOUNT_F_EMPTY_PATH) != 0) {
        fprintf(stderr, "attach: cannot mount it at %s: %s.\n", argv[3], strerror(errno));
        return 1;
    }
    return 0;
}
