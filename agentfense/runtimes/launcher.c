/* launcher: run one command in a bwrap sandbox that no process holds while it is idle.
 *
 *   launcher hold READY BLOCK
 *   launcher attach MNT WORKSPACE ro|rw UID GID
 *   launcher idle PROGRAM ARGS...
 *   launcher wait SOCKET LIMITS
 *   launcher run STATUS SECCOMP WATCH NS INIT_LEAF CMD_LEAF JOIN DOOR LIMITS UID GID NPROC HOME
 *       CWD -- cmd
 *
 * A sandbox is a set of namespaces (mount, network, ipc, uts) that bwrap builds once, with
 * `launcher hold` as its command: it says ready on READY, and waits for BLOCK to close while
 * the server opens /proc/<it>/ns/ and keeps those fds; then it and bwrap exit (see
 * _held.py). Nothing of the sandbox runs until a command does. A set built ahead, before
 * any start asks for it, is built under `launcher idle bwrap ...`, which runs bwrap (and so
 * everything it starts) under SCHED_IDLE: the build takes only CPU time nothing else wants,
 * and never delays the commands and starts it is meant to speed up.
 *
 * `run` starts one command there; the server spawns it as root with the command's stdio on
 * 0, 1, 2, its environment as ours, and these fds: STATUS (a pipe the server reads), SECCOMP
 * (the filter, as `struct sock_filter`s), WATCH (a socket, or -1: see below), NS (the held
 * namespaces, comma-separated:
 * mnt,net,ipc,uts), INIT_LEAF and CMD_LEAF (cgroup v2 directories, or -1), JOIN (a pidfd of
 * a running init, or -1), DOOR (a file of that init's: see below), LIMITS (the sandbox's
 * limit cgroups' cgroup.procs, write fds,
 * comma-separated, or -). UID and GID are the sandbox's on the host; NPROC its RLIMIT_NPROC
 * (0: none); HOME `fresh` (the command gets an empty $HOME of its own, removed when it
 * ends) or `keep` (/home/sandbox, shared); CWD its working directory.
 *
 * With a WATCH socket (the sandbox has a network), the launcher first loads the filter of
 * raw_sockets.c, which everything it starts inherits, and sends its listener there (one
 * datagram, the fd by SCM_RIGHTS): the server answers and logs the raw and packet sockets
 * the command's processes try to open. The launcher then drops root's supplementary groups
 * and joins the limit cgroups. Then either
 * (JOIN is -1) it enters the held namespaces, unshares a pid namespace and a mount namespace
 * (a copy of the held one: the same /tmp, /home and /workspace, but a /proc of its own) and
 * starts an init there (pid 1, in INIT_LEAF), which mounts that /proc and then says `init
 * PID` (its host pid), before anything else is said; or (an init still runs: something an
 * earlier command left, or a command still running) it joins that init's namespaces, so
 * the command sees, and may signal, what runs there, as commands always could. An init ends
 * once nothing else is in its namespace, and its namespace with it: so that no command
 * joins it as it ends (and dies with it), the init decides under an exclusive flock of DOOR
 * and marks it closed, and a joiner enters under a shared one, unless it is closed (then it
 * fails with ESRCH, and the server starts a new init).
 *
 * Either way the command gets a guard, started (by the init, or by the launcher when it
 * joins) in INIT_LEAF (the init's: an init and the guards of its namespace's commands),
 * root of the host in the sandbox's namespaces. It makes the command's home (a fresh one:
 * owned by UID) and starts the command right in CMD_LEAF (so the leaf holds the command's
 * processes and nothing else), which makes a cgroup namespace rooted there and a user
 * namespace of its own that the guard maps (uid and gid 1000 inside = UID and GID on the
 * host, nothing else); as uid 1000 there: no
 * capabilities, RLIMIT_NPROC, not dumpable, no_new_privs, the seccomp filter, a new session,
 * its Landlock domain (landlock.c), CWD, exec. The guard reports on STATUS, one line each:
 * `ok` once the command runs, or `error ERRNO FIELD MESSAGE` (FIELD: `workdir` when CWD is
 * at fault, else `-`) when it cannot start; then `exit CODE` (128+N for signal N) when the
 * command's own process ends. It then removes the command's home (as UID) and ends; what
 * the command left runs on, reaped by the init (root with no capabilities: see init_main),
 * and the init ends when nothing is left in its pid namespace. The launcher waits for what
 * it started, so the server reaps one child per command.
 *
 * `wait` is a `run` started ahead, with the sandbox: it joins the limit cgroups (LIMITS, as
 * above) at once, and then waits for the one request the server sends on SOCKET (a
 * SOCK_SEQPACKET socket): a datagram of NUL-terminated strings, ARGC, then `run`'s ARGC
 * arguments, then its environment, with the fds it names, in order, from 0 on (stdin,
 * stdout, stderr first). It puts them there and becomes that `run` (LIMITS `-`: it is in
 * them already). Joining a limit cgroup moves a process, which waits for an RCU grace period
 * unless a move happened a moment before (milliseconds, on a host whose cgroup hierarchy has
 * no `favordynmods`), so a sandbox's first command, which follows its start at once, finds
 * that wait behind it. The socket closed without a request (the server's: no command came
 * soon enough): it ends.
 *
 * Whatever runs in the sandbox gets none of these fds (the guard keeps STATUS; the command
 * closes every fd beyond its stdio): no command can forge another's report. Nothing in the
 * sandbox can signal, trace (seccomp) or look into a guard (root's), nor the init (pid 1:
 * the kernel drops the signals from inside its namespace that it does not handle; not
 * dumpable); a launcher that dies takes what it started with it (the parent-death signal).
 */

const char PROGRAM[] = "launcher";

#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SANDBOX_ID 1000
#define NS_COUNT 4
#define MAX_LIMITS 8
#define WAIT_MAX_FDS 16         /* a request's fds: `run` passes at most 14 */
#define WAIT_MAX_REQUEST 65536  /* bytes: a longer command is spawned as it comes */
#define MAX_FILTER 4096 /* instructions: the kernel's BPF_MAXINSNS */
#define COMMAND_OOM_SCORE_ADJ "500"
#define INIT_OOM_SCORE_ADJ "-999"

/* Our command line's memory, which /proc/<pid>/cmdline shows: the init rewrites it. */
static char *args_start, *args_end;

static const int NS_TYPES[NS_COUNT] = {CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS};

struct request {
    int status;
    int seccomp;
    int watch;
    int ns[NS_COUNT];
    int init_leaf;
    int cmd_leaf;
    int join;
    int door;
    int limits[MAX_LIMITS];
    int limit_count;
    uid_t uid;
    gid_t gid;
    long nproc;
    int fresh_home;
    const char *cwd;
    char **argv;
};

/* One line on STATUS, in one write (shorter than PIPE_BUF: never torn). */
static void say(int fd, const char *format, ...)
{
    char line[512];
    va_list args;
    int length;

    va_start(args, format);
    length = vsnprintf(line, sizeof line - 1, format, args);
    va_end(args);
    if (length < 0)
        return;
    if (length > (int)sizeof line - 2)
        length = (int)sizeof line - 2;
    for (int i = 0; i < length; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    line[length++] = '\n';
    if (write(fd, line, (size_t)length) != length) {
        /* the server is gone: nobody to tell */
    }
}

/* The command cannot start: say why (the errno of `what`) and end. */
static void refuse(int status, const char *what)
{
    int error = errno;
    say(status, "error %d - cannot %s: %s", error, what, strerror(error));
    _exit(126);
}

static int parse_fds(const char *text, int *fds, int most)
{
    int count = 0;
    char *end;

    if (!strcmp(text, "-"))
        return 0;
    for (;;) {
        long fd = strtol(text, &end, 10);
        if (end == text || fd < 0 || fd > 65535 || count == most)
            return -1;
        fds[count++] = (int)fd;
        if (*end == '\0')
            return count;
        if (*end != ',')
            return -1;
        text = end + 1;
    }
}

/* Close every fd from 3 on but `keep` (-1: none). */
static void close_all_but(int keep)
{
    if (keep > 3)
        syscall(SYS_close_range, 3u, (unsigned)keep - 1, 0);
    syscall(SYS_close_range, (unsigned)(keep < 3 ? 3 : keep + 1), ~0u, 0);
}

static void stdio_to_null(void)
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        close(null);
    }
}

static void mount_proc(int status)
{
    unsigned long ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        refuse(status, "mount /proc");
    /* bwrap does the same: a sysctl the host's root owns stays read-only to the sandbox. */
    if (mount("/proc/sys", "/proc/sys", NULL, MS_BIND | MS_REC, NULL) != 0 ||
        mount(NULL, "/proc/sys", NULL, ro, NULL) != 0)
        refuse(status, "bind /proc/sys read-only");
    if (mount("/proc/sysrq-trigger", "/proc/sysrq-trigger", NULL, MS_BIND, NULL) == 0 &&
        mount(NULL, "/proc/sysrq-trigger", NULL, ro, NULL) != 0)
        refuse(status, "bind /proc/sysrq-trigger read-only");
}

static void load_seccomp(int status, int fd)
{
    static struct sock_filter filter[MAX_FILTER];
    size_t got = 0;
    ssize_t n;

    while ((n = pread(fd, (char *)filter + got, sizeof filter - got, (off_t)got)) > 0)
        got += (size_t)n;
    if (n < 0 || got == 0 || got % sizeof filter[0] != 0)
        refuse(status, "read the seccomp filter");
    struct sock_fprog program = {(unsigned short)(got / sizeof filter[0]), filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
        refuse(status, "load the seccomp filter");
}

/* As uid 1000 of the command's own user namespace, with no capability left anywhere. */
static void become_sandbox_user(int status)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];

    for (int cap = 0; cap <= 63; cap++) /* (needs CAP_SETPCAP: before the uid changes) */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            refuse(status, "drop the bounding set");
    if (setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) != 0)
        refuse(status, "become the sandbox's group");
    if (setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) != 0)
        refuse(status, "become the sandbox's user");
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) != 0)
        refuse(status, "drop capabilities");
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        refuse(status, "set no_new_privs");
}

/* A new, empty $HOME under a name no one can guess (the guard makes it, as root, and gives
 * it to the sandbox's uid). A /home an earlier command made unusable (chmod 000: modes are
 * no Landlock right, and /home is the sandbox's) gets its mode back first: the command
 * could not reach its home through it. (/home is a mount point: it cannot be replaced.) */
static void make_home(int status, char *home)
{
    struct stat st;
    if (lstat("/home", &st) != 0 || !S_ISDIR(st.st_mode))
        refuse(status, "look at /home");
    if ((st.st_mode & 0755) != 0755 && chmod("/home", 0755) != 0)
        refuse(status, "give /home its mode back");
    if (mkdtemp(home) == NULL)
        refuse(status, "make the command's home");
}

/* Remove a command's home, as the sandbox's host uid (what the command left there is its).
 * rm runs in no Landlock domain and under no seccomp filter: with none of the command's
 * environment (ours), or the client's LD_PRELOAD or LD_LIBRARY_PATH would load a library the
 * command wrote into a process that may trace and look into every later command. */
static void remove_home(const char *home, uid_t uid, gid_t gid)
{
    char *const no_environment[] = {NULL};

    if (rmdir(home) == 0 || errno == ENOENT)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        if (setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
            _exit(126);
        execle("/bin/rm", "rm", "-rf", "--", home, (char *)NULL, no_environment);
        _exit(127);
    }
    while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

/* In the command's process, whose only fds are its stdio and `report` (close-on-exec):
 * never returns. Its errors go on `report`, as ERRNO FIELD MESSAGE, for the guard to pass on. */
static void exec_command(struct request *r, const char *landlock_home, int report)
{
    int error;
    const char *field = "-";
    char message[400];

    setsid();
    if (enter_landlock(landlock_home) != 0) {
        error = errno;
        snprintf(message, sizeof message, "cannot confine the command: %s", strerror(error));
    } else if (chdir(r->cwd) != 0) {
        error = errno;
        field = "workdir";
        snprintf(message, sizeof message, "%s: %s", strerror(error), r->cwd);
    } else {
        execvp(r->argv[0], r->argv);
        error = errno;
        snprintf(message, sizeof message, "%s: %s", strerror(error), r->argv[0]);
    }
    dprintf(report, "%d %s %s", error, field, message);
    _exit(127);
}

/* fork(), the child starting right in the cgroup `leaf` (a directory fd; -1: ours). */
static pid_t fork_into(int leaf)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    if (leaf >= 0) {
        args.flags = CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)leaf;
    }
    return (pid_t)syscall(SYS_clone3, &args, sizeof args);
}

static int write_file(int at, const char *path, const char *text)
{
    int fd = openat(at, path, O_WRONLY | O_CLOEXEC);
    ssize_t length = (ssize_t)strlen(text);
    int ok = fd >= 0 && write(fd, text, (size_t)length) == length;
    if (fd >= 0)
        close(fd);
    return ok ? 0 : -1;
}

/* Map uid and gid 1000 of a guard's new user namespace to the sandbox's on the host; `proc`
 * is a /proc that shows the guard (the held mount namespace has none that does). */
static int map_ids(int proc, pid_t guard, uid_t uid, gid_t gid)
{
    char path[64], map[64];

    snprintf(path, sizeof path, "%d/setgroups", (int)guard);
    if (write_file(proc, path, "deny") != 0)
        return -1;
    snprintf(path, sizeof path, "%d/uid_map", (int)guard);
    snprintf(map, sizeof map, "%d %u 1\n", SANDBOX_ID, (unsigned)uid);
    if (write_file(proc, path, map) != 0)
        return -1;
    snprintf(path, sizeof path, "%d/gid_map", (int)guard);
    snprintf(map, sizeof map, "%d %u 1\n", SANDBOX_ID, (unsigned)gid);
    return write_file(proc, path, map);
}

/* What /proc/<pid>/cmdline shows for us from now on (the command keeps its own copy). */
static void rename_self(const char *name)
{
    size_t room = (size_t)(args_end - args_start);
    memset(args_start, 0, room);
    if (strlen(name) < room)
        memcpy(args_start, name, strlen(name));
}

/* In the command's process: its own user namespace (mapped by the guard), uid 1000 there,
 * the seccomp filter, then exec_command. Never returns. */
static void command_main(struct request *r, const char *landlock_home, int unshared,
                         int mapped, int report)
{
    char byte;

    /* The OOM killer takes commands first; the guard (and the init) last, at the launcher's
     * score: a guard killed would lose the command's result. */
    write_file(AT_FDCWD, "/proc/self/oom_score_adj", COMMAND_OOM_SCORE_ADJ);
    if (unshare(CLONE_NEWCGROUP) != 0) /* its root: the command's own leaf */
        refuse(r->status, "make a cgroup namespace");
    if (r->nproc > 0) {
        struct rlimit limit = {(rlim_t)r->nproc, (rlim_t)r->nproc};
        if (setrlimit(RLIMIT_NPROC, &limit) != 0)
            refuse(r->status, "set the process limit");
    }
    /* The kernel counts RLIMIT_NPROC per user namespace and uid, and at the uid of the host
     * that owns the namespace too, up to the limit of the process that made it, when that
     * was not root: so the namespace is made by the sandbox's uid (real and effective; the
     * saved uid stays root's, which keeps our capabilities, raised again, for the kernels
     * that let only a privileged process make one), with the limit set, and counts every
     * process of every command of the sandbox together, not each command's alone. */
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[2];
    if (setresuid(r->uid, r->uid, 0) != 0)
        refuse(r->status, "become the sandbox's user");
    if (syscall(SYS_capget, &head, caps) != 0)
        refuse(r->status, "read our capabilities");
    caps[0].effective = caps[0].permitted;
    caps[1].effective = caps[1].permitted;
    if (syscall(SYS_capset, &head, caps) != 0)
        refuse(r->status, "keep our capabilities");
    if (unshare(CLONE_NEWUSER) != 0)
        refuse(r->status, "make a user namespace");
    if (write(unshared, "u", 1) != 1 || read(mapped, &byte, 1) != 1)
        _exit(126); /* the guard said why */
    close(unshared);
    close(mapped);
    become_sandbox_user(r->status);
    load_seccomp(r->status, r->seccomp);
    if (report != 3 && dup3(report, 3, O_CLOEXEC) != 3)
        refuse(r->status, "keep the report pipe");
    close_all_but(3);
    exec_command(r, landlock_home, 3);
}

/* The command's guard (see the top), root of the host in the sandbox's namespaces: nothing
 * there may signal, trace or look into it. Never returns. */
static void guard_main(struct request *r)
{
    int status = r->status;
    char home[] = "/home/home-XXXXXX";
    const char *landlock_home = "/home";
    int unshared[2], mapped[2], report[2];
    char byte;

    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        refuse(status, "set the parent-death signal");
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int proc = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC); /* (this pid namespace's) */
    if (proc < 0)
        refuse(status, "open /proc");
    if (r->fresh_home) {
        make_home(status, home);
        if (chown(home, r->uid, r->gid) != 0)
            refuse(status, "give the command its home");
        if (setenv("HOME", home, 1) != 0)
            refuse(status, "set $HOME");
        landlock_home = home;
    }
    if (pipe2(unshared, O_CLOEXEC) != 0 || pipe2(mapped, O_CLOEXEC) != 0 ||
        pipe2(report, O_CLOEXEC) != 0)
        refuse(status, "make a pipe");
    /* The command starts right in its own leaf: its processes, and only they, are there. */
    pid_t command = fork_into(r->cmd_leaf);
    if (command < 0) {
        int error = errno;
        if (r->fresh_home)
            rmdir(home);
        errno = error;
        refuse(status, "fork the command's process");
    }
    if (command == 0) {
        close(unshared[0]);
        close(mapped[1]);
        close(report[0]);
        command_main(r, landlock_home, unshared[1], mapped[0], report[1]);
    }
    rename_self("guard");
    close(unshared[1]);
    close(mapped[0]);
    close(report[1]);
    if (read(unshared[0], &byte, 1) == 1) {
        if (map_ids(proc, command, r->uid, r->gid) != 0) {
            say(status, "error %d - cannot map the sandbox's user: %s", errno, strerror(errno));
            kill(command, SIGKILL);
        } else if (write(mapped[1], "m", 1) != 1) {
            kill(command, SIGKILL);
        }
    }
    close(unshared[0]);
    close(mapped[1]);
    close(proc);
    char why[512];
    ssize_t got = 0, n;
    while ((n = read(report[0], why + got, sizeof why - 1 - (size_t)got)) > 0)
        got += n;
    close(report[0]);
    if (got > 0) {
        why[got] = '\0';
        say(status, "error %s", why);
    } else {
        say(status, "ok"); /* (or the command said why it could not, first) */
    }
    stdio_to_null(); /* the command's: let the server see EOF once only leftovers hold them */
    close_all_but(got > 0 ? -1 : status);
    int wstatus = 0;
    while (waitpid(command, &wstatus, 0) < 0 && errno == EINTR) {
    }
    if (got == 0)
        say(status, "exit %d",
            WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus));
    close(status);
    if (r->fresh_home)
        remove_home(home, r->uid, r->gid);
    _exit(0);
}

/* Start the command's guard, in the init's leaf (the command's holds the command's processes
 * alone). Its pid, or -1 (said on STATUS). */
static pid_t start_guard(struct request *r)
{
    pid_t pid = fork_into(r->init_leaf);
    if (pid < 0) {
        say(r->status, "error %d - cannot fork the command's guard: %s", errno, strerror(errno));
        return -1;
    }
    if (pid == 0)
        guard_main(r);
    return pid;
}

static void wake(int signal_number)
{
    (void)signal_number;
}

/* Pidfds (up to `most`) on the processes of our pid namespace but us (its /proc lists them). */
static int others(int *pidfds, int most)
{
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int count = 0;

    if (proc == NULL)
        return 0;
    while (count < most && (entry = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || pid <= 1)
            continue;
        int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (fd >= 0)
            pidfds[count++] = fd;
    }
    closedir(proc);
    return count;
}

/* Reap whatever ends in our pid namespace; end once nothing else is in it. Commands that
 * joined it are not our children (their launchers, outside, are their parents), so while
 * we have none, we wait for those to end too (their pidfds): if we ended, the kernel would
 * kill them with the namespace. SIGCHLD (blocked but while we wait) wakes us for orphans. */
static void reap_until_empty(int door)
{
    struct sigaction action;
    sigset_t chld, waiting;
    struct pollfd polled[256];
    int pidfds[256];

    memset(&action, 0, sizeof action);
    action.sa_handler = wake;
    sigaction(SIGCHLD, &action, NULL);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &waiting);
    sigdelset(&waiting, SIGCHLD);
    for (;;) {
        pid_t pid;
        while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {
        }
        if (pid == 0) { /* children still run */
            sigsuspend(&waiting);
            continue;
        }
        flock(door, LOCK_EX); /* (no command joins meanwhile) */
        int count = others(pidfds, 256);
        if (count == 0) {
            if (pwrite(door, "x", 1, 0) != 1) {
                /* (a file of the server's own: cannot fail) */
            }
            _exit(0);
        }
        flock(door, LOCK_UN);
        for (int i = 0; i < count; i++) {
            polled[i].fd = pidfds[i];
            polled[i].events = POLLIN;
        }
        ppoll(polled, (nfds_t)count, NULL, &waiting);
        for (int i = 0; i < count; i++)
            close(pidfds[i]);
    }
}

/* The init of a new pid namespace (pid 1, in INIT_LEAF): mounts the namespace's /proc, says
 * `init PID` (its host pid, which the launcher sends on `go`), starts the first command's
 * guard, then reaps everything orphaned there until nothing is left, as the sandbox's host
 * uid with no capabilities. Never returns. */
static void init_main(struct request *r, int go)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    pid_t pid;

    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        refuse(r->status, "set the parent-death signal");
    mount_proc(r->status);
    /* Said once /proc is ours (a command that joins opens it) and before the guard says
     * anything: the server reads it first. */
    if (read(go, &pid, sizeof pid) != sizeof pid)
        _exit(126);
    close(go);
    say(r->status, "init %d", (int)pid);
    start_guard(r);
    rename_self("init");
    stdio_to_null();
    if (r->door != 3 && dup3(r->door, 3, O_CLOEXEC) != 3)
        _exit(126);
    r->door = 3;
    close_all_but(3);
    for (int cap = 0; cap <= 63; cap++)
        prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    /* Root with no capability, not the sandbox's uid: a command could then reach us by what
     * needs no more than the same uid, signals aside (pid 1 takes none from its namespace but
     * SIGCHLD): prlimit(2) (RLIMIT_NOFILE 0: we could not list /proc, took the namespace for
     * empty and ended, killing every command there; RLIMIT_CPU), setpriority... */
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) != 0)
        _exit(126); /* (never root with capabilities in the sandbox's reach) */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    reap_until_empty(r->door);
}

/* Load raw_sockets.c's filter, and send its listener on WATCH (see the top). */
static void watch(int status, int sock)
{
    int listener = watch_raw_sockets();
    if (listener < 0)
        refuse(status, "watch the command's raw sockets");
    char byte = 'w';
    struct iovec iov = {&byte, 1};
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof control.space};
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &listener, sizeof(int));
    if (sendmsg(sock, &message, MSG_NOSIGNAL) != 1)
        refuse(status, "hand the raw-socket watch to the server");
    close(listener);
    close(sock);
}

static int run(struct request *r)
{
    int status = r->status;
    pid_t pid;

    if (r->watch >= 0)
        watch(status, r->watch);
    if (setgroups(0, NULL) != 0)
        refuse(status, "drop the supplementary groups");
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        refuse(status, "set the parent-death signal");
    /* The OOM killer takes an init (its pid namespace goes with it) and a guard last. */
    write_file(AT_FDCWD, "/proc/self/oom_score_adj", INIT_OOM_SCORE_ADJ);
    for (int i = 0; i < r->limit_count; i++) {
        if (write(r->limits[i], "0", 1) != 1)
            refuse(status, "join the sandbox's limit cgroups");
        close(r->limits[i]);
    }
    /* The door, opened anew: a flock belongs to an open file description, which the fd the
     * server passes shares with the server and the init (so their locks would be one). */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", r->door);
    int door = open(path, O_RDWR | O_CLOEXEC);
    if (door < 0)
        refuse(status, "open the door");
    close(r->door);
    r->door = door;
    if (r->join >= 0) {
        char closed = 0;
        flock(r->door, LOCK_SH);
        if (pread(r->door, &closed, 1, 0) == 1 && closed == 'x') {
            errno = ESRCH;
            refuse(status, "join the running commands (their init has ended)");
        }
        if (setns(r->join, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC |
                               CLONE_NEWUTS) != 0)
            refuse(status, "join the running commands");
        pid = start_guard(r);
        flock(r->door, LOCK_UN); /* (the guard is in the namespace: the init sees it) */
    } else {
        for (int i = 0; i < NS_COUNT; i++)
            if (setns(r->ns[i], NS_TYPES[i]) != 0)
                refuse(status, "enter the sandbox's namespaces");
        if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0)
            refuse(status, "make the command's pid namespace");
        int go[2];
        if (pipe2(go, O_CLOEXEC) != 0)
            refuse(status, "make a pipe");
        pid = fork_into(r->init_leaf);
        if (pid < 0)
            refuse(status, "fork the commands' init");
        if (pid == 0) {
            close(go[1]);
            init_main(r, go[0]);
        }
        close(go[0]);
        if (write(go[1], &pid, sizeof pid) != sizeof pid) /* (its host pid, for it to say) */
            kill(pid, SIGKILL);
        close(go[1]);
    }
    stdio_to_null();
    close_all_but(-1);
    while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    return 0;
}

/* Give a sandbox built ahead (a pool's: its /workspace an empty directory) its files: a
 * clone of WORKSPACE's mount (read-only: `ro`), taken here in the host's mount namespace,
 * moved onto /workspace in the sandbox's (MNT, a held fd); then its tmpfs to UID and GID.
 * Errors: one sentence on stderr, exit 126. */
static int attach(int mnt, const char *workspace, int read_only, uid_t uid, gid_t gid)
{
    static const char *const owned[] = {"/home", "/home/sandbox", "/dev/shm", "/tmp"};
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, workspace, OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0)
        return fail("clone the mount of", workspace);
    if (read_only) {
        struct mount_attr_ {
            uint64_t attr_set, attr_clr, propagation, userns_fd;
        } attr = {0x1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0};
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
            return fail("make read-only the mount of", workspace);
    }
    if (setns(mnt, CLONE_NEWNS) != 0)
        return fail("enter the sandbox's mount namespace", NULL);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, "/workspace", 0x4 /* F_EMPTY_PATH */) != 0)
        return fail("mount the sandbox's files on", "/workspace");
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        if (chown(owned[i], uid, gid) != 0)
            return fail("give the sandbox", owned[i]);
    if (chmod("/tmp", 01777) != 0)
        return fail("open up", "/tmp");
    return 0;
}

/* bwrap's command at create: ready once every mount is in place; gone when told. */
static int hold(int ready, int block)
{
    char byte = 'r';
    if (write(ready, &byte, 1) != 1)
        return 126;
    close(ready);
    while (read(block, &byte, 1) > 0) {
    }
    return 0;
}

/* PROGRAM with ARGS (argv[0] is PROGRAM), under SCHED_IDLE (or as it is, when it cannot). */
static int idle(char **argv)
{
    struct sched_param param;
    memset(&param, 0, sizeof param);
    if (sched_setscheduler(0, SCHED_IDLE, &param) != 0)
        fprintf(stderr, "launcher: cannot lower the CPU priority: %s\n", strerror(errno));
    execv(argv[0], argv);
    fprintf(stderr, "launcher: cannot run %s: %s\n", argv[0], strerror(errno));
    return 126;
}

static int usage(void);
static int parse_fd(const char *text, int *fd);

/* `launcher wait SOCKET LIMITS` (see the top): never returns but at the socket's end. */
static int wait_for_request(int sock, const char *limits_text)
{
    static char request[WAIT_MAX_REQUEST + 1];
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * WAIT_MAX_FDS)];
    } control;
    int limits[MAX_LIMITS], fds[WAIT_MAX_FDS], fd_count = 0, join_error = 0, status;
    int limit_count = parse_fds(limits_text, limits, MAX_LIMITS);
    struct iovec part = {request, WAIT_MAX_REQUEST};
    struct msghdr message;
    ssize_t size;

    if (limit_count < 0 || fcntl(sock, F_SETFD, FD_CLOEXEC) != 0)
        return usage();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        return 126;
    for (int i = 0; i < limit_count; i++) {
        if (write(limits[i], "0", 1) != 1 && join_error == 0)
            join_error = errno; /* (said once the request gives a STATUS to say it on) */
        close(limits[i]);
    }
    memset(&message, 0, sizeof message);
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = sizeof control.space;
    do
        size = recvmsg(sock, &message, MSG_CMSG_CLOEXEC);
    while (size < 0 && errno == EINTR);
    if (size <= 0)
        return 0; /* not wanted */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (count > (size_t)(WAIT_MAX_FDS - fd_count))
            return 126;
        memcpy(fds + fd_count, CMSG_DATA(c), count * sizeof(int));
        fd_count += (int)count;
    }
    if ((message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || fd_count < 3 ||
        request[size - 1] != '\0')
        return 126;
    request[size] = '\0';
    /* The fds at 0, 1, 2...: moved out of the way first (above any target, and the socket). */
    for (int i = 0; i < fd_count; i++) {
        int high = fcntl(fds[i], F_DUPFD_CLOEXEC, 64);
        if (high < 0)
            return 126;
        close(fds[i]);
        fds[i] = high;
    }
    for (int i = 0; i < fd_count; i++)
        if (dup2(fds[i], i) != i) /* (the copy is not close-on-exec; the original is) */
            return 126;
    /* The strings: ARGC, the arguments, the environment. */
    size_t count = 0;
    for (ssize_t i = 0; i < size; i++)
        count += request[i] == '\0';
    char **strings = calloc(count + 2, sizeof(char *));
    if (strings == NULL)
        return 126;
    char *at = request;
    for (size_t i = 0; i < count; i++, at += strlen(at) + 1)
        strings[i] = at;
    char *end;
    long argc = strtol(strings[0], &end, 10);
    if (*end != '\0' || argc < 17 || (size_t)argc > count - 1 || strcmp(strings[2], "run") != 0)
        return 126;
    char **args = strings + 1, **environment = strings + 1 + argc;
    memmove(environment + 1, environment, (count - 1 - (size_t)argc) * sizeof(char *));
    environment[0] = NULL; /* (the arguments' end; the environment's is already there) */
    environment++;
    if (parse_fd(args[2], &status) != 0 || status < 0)
        return 126;
    if (join_error != 0) {
        errno = join_error;
        refuse(status, "join the sandbox's limit cgroups");
    }
    execve("/proc/self/exe", args, environment);
    refuse(status, "run the launcher");
    return 126;
}

static int usage(void)
{
    fputs("launcher: usage: launcher hold READY BLOCK | launcher attach MNT WORKSPACE ro|rw "
          "UID GID | launcher idle PROGRAM ARGS... | launcher wait SOCKET LIMITS | "
          "launcher run STATUS SECCOMP WATCH NS "
          "INIT_LEAF CMD_LEAF JOIN DOOR LIMITS UID GID NPROC HOME CWD -- cmd args...\n",
          stderr);
    return 126;
}

/* One fd, or -1 for "-1". */
static int parse_fd(const char *text, int *fd)
{
    if (!strcmp(text, "-1")) {
        *fd = -1;
        return 0;
    }
    return parse_fds(text, fd, 1) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct request r;

    args_start = argv[0];
    args_end = argv[argc - 1] + strlen(argv[argc - 1]) + 1;
    if (argc == 4 && !strcmp(argv[1], "hold"))
        return hold(atoi(argv[2]), atoi(argv[3]));
    if (argc == 7 && !strcmp(argv[1], "attach"))
        return attach(atoi(argv[2]), argv[3], !strcmp(argv[4], "ro"),
                      (uid_t)strtoul(argv[5], NULL, 10), (gid_t)strtoul(argv[6], NULL, 10));
    if (argc >= 3 && !strcmp(argv[1], "idle"))
        return idle(argv + 2);
    if (argc == 4 && !strcmp(argv[1], "wait"))
        return wait_for_request(atoi(argv[2]), argv[3]);
    if (argc < 18 || strcmp(argv[1], "run") != 0 || strcmp(argv[16], "--") != 0)
        return usage();
    memset(&r, 0, sizeof r);
    r.limit_count = parse_fds(argv[10], r.limits, MAX_LIMITS);
    if (parse_fd(argv[2], &r.status) != 0 || parse_fd(argv[3], &r.seccomp) != 0 ||
        parse_fd(argv[4], &r.watch) != 0 || parse_fds(argv[5], r.ns, NS_COUNT) != NS_COUNT ||
        parse_fd(argv[6], &r.init_leaf) != 0 || parse_fd(argv[7], &r.cmd_leaf) != 0 ||
        parse_fd(argv[8], &r.join) != 0 || parse_fd(argv[9], &r.door) != 0 ||
        r.limit_count < 0 || r.status < 0 || r.seccomp < 0 || r.door < 0)
        return usage();
    r.uid = (uid_t)strtoul(argv[11], NULL, 10);
    r.gid = (gid_t)strtoul(argv[12], NULL, 10);
    r.nproc = atol(argv[13]);
    r.fresh_home = !strcmp(argv[14], "fresh");
    r.cwd = argv[15];
    r.argv = argv + 17;
    return run(&r);
}
