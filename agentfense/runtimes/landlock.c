/* landlock.c: the Landlock domain each command of a sandbox runs in, shared by the Docker
 * runtime's confine helper (confine.c) and the bwrap runtime's launcher (launcher.c); the
 * build puts this file before either (see _static_helpers.py), which names itself in PROGRAM.
 *
 * The domain handles the rights to change the file system, and allows them beneath every
 * top-level entry of / but /home (symbolic links skipped: they lead into those entries), and
 * beneath HOME (the command's own $HOME, or /home for a sandbox that keeps one): so a command
 * cannot write into a later command's $HOME. Making block devices is allowed nowhere.
 * Reading and executing are not handled: allowed. The kernel lets no process reach a process
 * of another Landlock domain (its /proc/<pid>/mem, environ, fd...), so what one command
 * leaves running cannot read or forge a later one. On a kernel without Landlock ABI 2 (Linux
 * 5.19: the first that can allow renames across directories) commands run unconfined.
 *
 * C99, no dependency but the C library; the Landlock ABI is spelled out here, so that the
 * build needs no kernel headers of a given age.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern const char PROGRAM[]; /* the helper's name, for its error messages */

/* The same numbers on every architecture (the unified system call table). */
#define SYS_CREATE_RULESET 444
#define SYS_ADD_RULE 445
#define SYS_RESTRICT_SELF 446
#define CREATE_RULESET_VERSION 1u
#define RULE_PATH_BENEATH 1

#define FS_WRITE_FILE (1ull << 1)
#define FS_REMOVE_DIR (1ull << 4)
#define FS_REMOVE_FILE (1ull << 5)
#define FS_MAKE_CHAR (1ull << 6)
#define FS_MAKE_DIR (1ull << 7)
#define FS_MAKE_REG (1ull << 8)
#define FS_MAKE_SOCK (1ull << 9)
#define FS_MAKE_FIFO (1ull << 10)
#define FS_MAKE_BLOCK (1ull << 11)
#define FS_MAKE_SYM (1ull << 12)
#define FS_REFER (1ull << 13)    /* ABI 2 */
#define FS_TRUNCATE (1ull << 14) /* ABI 3 */

struct ruleset_attr {
    uint64_t handled_access_fs;
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static int fail(const char *what, const char *name)
{
    fprintf(stderr, "%s: cannot %s%s%s: %s.\n", PROGRAM, what, name ? " " : "", name ? name : "",
            strerror(errno));
    return 126;
}

/* Allow beneath the open `fd` what a directory may take, or a plain file. */
static int allow(int ruleset, int fd, const struct stat *st, uint64_t dir_rights,
                 uint64_t file_rights)
{
    struct path_beneath_attr rule;

    rule.allowed_access = S_ISDIR(st->st_mode) ? dir_rights : file_rights;
    rule.parent_fd = fd;
    return (int)syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, &rule, 0);
}

/* The rules: every top-level entry of / but /home, and `home`. Returns 0, or 126 (said). */
static int add_rules(int ruleset, const char *home, uint64_t dir_rights, uint64_t file_rights)
{
    DIR *root = opendir("/");
    struct dirent *entry;
    struct stat st;
    int fd;

    if (root == NULL)
        return fail("list", "/");
    for (errno = 0; (entry = readdir(root)) != NULL; errno = 0) {
        const char *name = entry->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "home"))
            continue;
        fd = openat(dirfd(root), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            closedir(root);
            return fail("open /", name);
        }
        if (fstat(fd, &st) != 0) {
            close(fd);
            closedir(root);
            return fail("look at /", name);
        }
        /* A symbolic link is skipped: it leads into the entries allowed, or nowhere allowed. */
        if (!S_ISLNK(st.st_mode) && allow(ruleset, fd, &st, dir_rights, file_rights) != 0) {
            close(fd);
            closedir(root);
            return fail("allow writes beneath /", name);
        }
        close(fd);
    }
    if (errno != 0) {
        closedir(root);
        return fail("list", "/");
    }
    closedir(root);
    fd = open(home, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail("open the home directory", home);
    if (fstat(fd, &st) != 0 || allow(ruleset, fd, &st, dir_rights, file_rights) != 0) {
        close(fd);
        return fail("allow writes beneath", home);
    }
    close(fd);
    return 0;
}

/* Enter the command's Landlock domain (needs no_new_privs). Returns 0, or 126 (said). */
static int enter_landlock(const char *home)
{
    struct ruleset_attr attr;
    uint64_t dir_rights, file_rights;
    long abi = syscall(SYS_CREATE_RULESET, NULL, 0, CREATE_RULESET_VERSION);
    int ruleset, status;

    if (abi < 2)
        return 0;
    file_rights = FS_WRITE_FILE | (abi >= 3 ? FS_TRUNCATE : 0);
    dir_rights = file_rights | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR |
                 FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER;
    attr.handled_access_fs = dir_rights | FS_MAKE_BLOCK;
    ruleset = (int)syscall(SYS_CREATE_RULESET, &attr, sizeof attr, 0);
    if (ruleset < 0)
        return fail("create a Landlock ruleset", NULL);
    status = add_rules(ruleset, home, dir_rights, file_rights);
    if (status == 0 && syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0)
        status = fail("enter the Landlock domain", NULL);
    close(ruleset);
    return status;
}
