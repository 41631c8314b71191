/* launcher: run one command in a sandbox whose namespaces are held by nsfs bind mounts.
 *
 *   launcher NSDIR CGDIR UID GID NPROC -- cmd args...
 *   launcher join INITPID UID GID NPROC -- cmd args...   (while an init holds a job)
 *   launcher build BUILDERNS -- bwrap args...  (create: bwrap from the builder mount ns)
 *   launcher hold READYFD BLOCKFD (bwrap's command at create; see nsbox.py)
 *
 * NSDIR holds bind mounts of the sandbox's /proc/<pid>/ns/{user,mnt,net,ipc,uts,cgroup} files
 * (a missing one is not joined: "user" absent = no user namespace). CGDIR is a cgroup v2
 * directory the command starts in (clone3 CLONE_INTO_CGROUP), or "-".
 *
 * Steps: drop the host's supplementary groups (while we may: setgroups is denied in the
 * sandbox's user namespace), setns into each held namespace (user first), unshare a new pid
 * namespace and a new mount namespace (a copy of the held one: same /tmp, /home, /workspace
 * superblocks, but its own /proc), then clone the sandbox's init (pid 1 of the new pid
 * namespace), which mounts /proc for it (and the read-only /proc/sys over it), becomes UID:GID
 * with no capabilities, sets RLIMIT_NPROC, no_new_privs, the ptrace seccomp filter, a fresh
 * $HOME and a Landlock domain (as the agent does), and forks the command. The init reports the
 * command's exit status to the launcher over a pipe, closes its stdio and stays only while
 * something the command left (a background job) still runs: then it exits, and the pid
 * namespace with it. The launcher exits with the command's status as soon as it is known.
 *
 * Prototype for issue 16: errors are one sentence on stderr, exit 126/127.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SYS_CREATE_RULESET 444
#define SYS_ADD_RULE 445
#define SYS_RESTRICT_SELF 446
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
#define FS_REFER (1ull << 13)
#define FS_TRUNCATE (1ull << 14)

static const char *const NS_NAMES[] = {"user", "mnt", "net", "ipc", "uts", "cgroup"};
static const int NS_TYPES[] = {CLONE_NEWUSER, CLONE_NEWNS,  CLONE_NEWNET,
                               CLONE_NEWIPC,  CLONE_NEWUTS, CLONE_NEWCGROUP};
#define NS_COUNT 6

static void die(const char *what)
{
    fprintf(stderr, "launcher: cannot %s: %s.\n", what, strerror(errno));
    _exit(126);
}

/* The agent's filter (_seccomp.py): ptrace, process_vm_readv/writev, pidfd_getfd -> EPERM;
 * another arch or x32 -> kill. Plus, as there is no user namespace of the sandbox's own to
 * seal (bwrap's --disable-userns): clone/unshare with CLONE_NEWUSER -> EPERM, clone3 -> ENOSYS
 * (its flags are behind a pointer; libc falls back to clone), as Docker's profile does. */
static void load_seccomp(void)
{
    struct sock_filter filter[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        /* 2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
        /* 5 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 101, 10, 0),
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 310, 9, 0),
        /* 8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 311, 8, 0),
        /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 438, 7, 0),
        /* 10 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 435, 7, 0),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 56, 2, 0),
        /* 12 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 272, 1, 0),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 14 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        /* 15 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 1, 0),
        /* 16 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 17 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        /* 18 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        die("load the seccomp filter");
}

static void drop_bounding_set(void) /* (needs CAP_SETPCAP: before the uid changes) */
{
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            die("drop the bounding set");
}

static void drop_caps(void)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) != 0)
        die("drop capabilities");
}

static void landlock(const char *home)
{
    struct {
        uint64_t handled;
    } attr;
    struct __attribute__((packed)) {
        uint64_t allowed;
        int32_t fd;
    } rule;
    long abi = syscall(SYS_CREATE_RULESET, NULL, 0, 1u);
    if (abi < 2)
        return;
    uint64_t file_rights = FS_WRITE_FILE | (abi >= 3 ? FS_TRUNCATE : 0);
    uint64_t dir_rights = file_rights | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR |
                          FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO |
                          FS_MAKE_SYM | FS_REFER;
    attr.handled = dir_rights | FS_MAKE_BLOCK;
    int ruleset = (int)syscall(SYS_CREATE_RULESET, &attr, sizeof attr, 0);
    if (ruleset < 0)
        die("create a Landlock ruleset");
    DIR *root = opendir("/");
    struct dirent *entry;
    struct stat st;
    if (root == NULL)
        die("list /");
    while ((entry = readdir(root)) != NULL) {
        const char *name = entry->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "home"))
            continue;
        int fd = openat(dirfd(root), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0)
            die("open a top-level entry");
        if (!S_ISLNK(st.st_mode)) {
            rule.allowed = S_ISDIR(st.st_mode) ? dir_rights : file_rights;
            rule.fd = fd;
            if (syscall(SYS_ADD_RULE, ruleset, 1, &rule, 0) != 0)
                die("add a Landlock rule");
        }
        close(fd);
    }
    closedir(root);
    int fd = open(home, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        die("open the home directory");
    rule.allowed = dir_rights;
    rule.fd = fd;
    if (syscall(SYS_ADD_RULE, ruleset, 1, &rule, 0) != 0)
        die("add the home rule");
    close(fd);
    if (syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0)
        die("enter the Landlock domain");
    close(ruleset);
}

static void mount_proc(void)
{
    unsigned long ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        die("mount /proc");
    if (mount("/proc/sys", "/proc/sys", NULL, MS_BIND | MS_REC, NULL) != 0 ||
        mount(NULL, "/proc/sys", NULL, ro, NULL) != 0)
        die("bind /proc/sys read-only");
    if (mount("/proc/sysrq-trigger", "/proc/sysrq-trigger", NULL, MS_BIND, NULL) == 0)
        mount(NULL, "/proc/sysrq-trigger", NULL, ro, NULL);
}

/* Become the sandbox's user: no capabilities, RLIMIT_NPROC, not dumpable, no_new_privs,
 * the seccomp filter. */
static void confine_self(uid_t uid, gid_t gid, long nproc)
{
    drop_bounding_set();
    if (setresgid(gid, gid, gid) != 0)
        die("set the gid");
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 || setresuid(uid, uid, uid) != 0)
        die("set the uid");
    drop_caps();
    if (nproc > 0) {
        struct rlimit limit = {(rlim_t)nproc, (rlim_t)nproc};
        if (setrlimit(RLIMIT_NPROC, &limit) != 0)
            die("set RLIMIT_NPROC");
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("set dumpable/no_new_privs");
    load_seccomp();
}

static char home[] = "/home/home-XXXXXX";

/* In the command's process: a new session, its Landlock domain, exec. */
static void exec_command(char **argv)
{
    char env_home[64];
    snprintf(env_home, sizeof env_home, "HOME=%s", home);
    char *env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", env_home, NULL};
    setsid();
    landlock(home);
    if (chdir("/workspace") != 0)
        die("enter /workspace");
    execvpe(argv[0], argv, env);
    fprintf(stderr, "launcher: cannot run %s: %s.\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

/* The sandbox's init (pid 1 of the command's pid namespace). Never returns. */
static void init_main(int status_w, uid_t uid, gid_t gid, long nproc, char **argv)
{
    mount_proc();
    confine_self(uid, gid, nproc);
    if (mkdtemp(home) == NULL)
        die("make a home");
    pid_t command = fork();
    if (command < 0)
        die("fork the command");
    if (command == 0) {
        close(status_w);
        exec_command(argv);
    }
    /* Our stdio is the command's: let the caller see EOF once only leftovers hold them. */
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            _exit(0); /* ECHILD: nothing left in the pid namespace */
        }
        if (pid == command) {
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            if (write(status_w, &code, sizeof code) != sizeof code) {
                /* the launcher is gone: nobody to tell */
            }
            close(status_w);
            rmdir(home); /* (a non-empty one stays: the prototype does not rm -rf) */
        }
    }
}

/* The holder bwrap runs at create: says it is ready (the namespaces and every mount are in
 * place), then waits for the server to have bound its namespaces and close the other end. */
static int hold(int ready, int block)
{
    char byte = 'r';
    if (write(ready, &byte, 1) != 1)
        die("say ready");
    close(ready);
    while (read(block, &byte, 1) > 0) {
    }
    return 0;
}

/* Join the pid namespace (and the /proc mount namespace, and the rest) of a command's init
 * that still runs (it holds a background job): one setns() on its pidfd, then the command is
 * our child there, not a pid 1; what it leaves behind is that init's to reap. */
static int join(pid_t init, uid_t uid, gid_t gid, long nproc, char **argv)
{
    int pidfd = (int)syscall(SYS_pidfd_open, init, 0);
    if (pidfd < 0)
        die("open the init's pidfd");
    if (setgroups(0, NULL) != 0)
        die("drop the supplementary groups");
    if (setns(pidfd, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                         CLONE_NEWCGROUP) != 0)
        die("join the init's namespaces");
    close(pidfd);
    pid_t command = fork();
    if (command < 0)
        die("fork the command");
    if (command == 0) {
        confine_self(uid, gid, nproc);
        if (mkdtemp(home) == NULL)
            die("make a home");
        exec_command(argv);
    }
    int status;
    while (waitpid(command, &status, 0) < 0)
        if (errno != EINTR)
            die("wait for the command");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* bwrap's way into the builder mount namespace (see nsbox.py): setns, then exec it. */
static int build(const char *builder, char **argv)
{
    int fd = open(builder, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNS) != 0)
        die("enter the builder mount namespace");
    execv(argv[0], argv);
    die("run bwrap");
    return 126;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "build") && !strcmp(argv[3], "--"))
        return build(argv[2], argv + 4);
    if (argc >= 8 && !strcmp(argv[1], "join") && !strcmp(argv[6], "--"))
        return join((pid_t)atol(argv[2]), (uid_t)atol(argv[3]), (gid_t)atol(argv[4]),
                    atol(argv[5]), argv + 7);
    if (argc == 4 && !strcmp(argv[1], "hold"))
        return hold(atoi(argv[2]), atoi(argv[3]));
    if (argc < 8 || strcmp(argv[6], "--") != 0) {
        fputs("usage: launcher NSDIR CGDIR UID GID NPROC -- cmd args...\n", stderr);
        return 126;
    }
    const char *nsdir = argv[1], *cgdir = argv[2];
    uid_t uid = (uid_t)atol(argv[3]);
    gid_t gid = (gid_t)atol(argv[4]);
    long nproc = atol(argv[5]);
    char path[4096];
    int fds[NS_COUNT];
    int cgfd = -1;

    for (int i = 0; i < NS_COUNT; i++) {
        snprintf(path, sizeof path, "%s/%s", nsdir, NS_NAMES[i]);
        fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0 && errno != ENOENT)
            die("open a namespace");
    }
    if (strcmp(cgdir, "-") != 0) {
        cgfd = open(cgdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cgfd < 0)
            die("open the command's cgroup");
    }
    if (setgroups(0, NULL) != 0)
        die("drop the supplementary groups");
    for (int i = 0; i < NS_COUNT; i++)
        if (fds[i] >= 0) {
            if (setns(fds[i], NS_TYPES[i]) != 0)
                die(NS_NAMES[i]);
            close(fds[i]);
        }
    if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0)
        die("unshare a pid and a mount namespace");
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        die("make the status pipe");
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    if (cgfd >= 0) {
        args.flags = CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)cgfd;
    }
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0)
        die("clone the sandbox's init");
    if (pid == 0) {
        close(pipefd[0]);
        init_main(pipefd[1], uid, gid, nproc, argv + 7);
    }
    close(pipefd[1]);
    int code;
    ssize_t got = read(pipefd[0], &code, sizeof code);
    if (got != sizeof code) {
        /* the init died before the command ended: its own status says why */
        int status;
        waitpid((pid_t)pid, &status, 0);
        fprintf(stderr, "launcher: the sandbox's init ended (status %d).\n", status);
        return 126;
    }
    return code;
}
