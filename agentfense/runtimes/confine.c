/* confine: run a command of a Docker sandbox in a Landlock domain of its own.
 *
 *   confine HOMEDIR cmd args...
 *   confine --watch-raw-sockets gate args...
 *
 * The server builds this file after landlock.c (cc -static -Os, see _static_helpers.py) and
 * binds it read-only into every container; each command's gate runs the command through it.
 * Every process of a sandbox runs as one uid, so without it a process left running by one
 * command may read a later command's /proc/<pid>/environ, write its mem, or open its fd/1;
 * landlock.c says what the domain allows. Errors: one sentence on stderr, exit 126 (127
 * when the command is not found, as a shell says).
 *
 * In a sandbox with a network, each command's gate starts under `--watch-raw-sockets`: the
 * filter of raw_sockets.c is loaded (the gate and everything it starts inherit it), its
 * listener left at fd WATCH_FD for the server to take while this waits for the gate's go
 * (one line on stdin, read here byte by byte: nothing of the command's stdin after it), and
 * the gate run once the listener is closed here: the image's shell never holds it (exit
 * 125, as the gate's own `read` would, when the server hung up before the go).
 */

const char PROGRAM[] = "confine";
#define WATCH_FD 9 /* (_raw_socket_watch.DOCKER_FD) */

int main(int argc, char **argv)
{
    int status;

    if (argc >= 3 && !strcmp(argv[1], "--watch-raw-sockets")) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            return fail("set no_new_privs", NULL);
        int listener = watch_raw_sockets();
        if (listener < 0)
            return fail("watch the command's raw sockets", NULL);
        if (listener != WATCH_FD && (dup2(listener, WATCH_FD) != WATCH_FD || close(listener) != 0))
            return fail("keep the raw-socket watch", NULL);
        char byte = 0;
        ssize_t got;
        while ((got = read(0, &byte, 1)) == 1 && byte != '\n') {
        }
        if (got != 1)
            return 125; /* (the server hung up before the go) */
        close(WATCH_FD);
        execvp(argv[2], argv + 2);
        return fail("run", argv[2]);
    }
    if (argc < 3) {
        fputs("confine: usage: confine HOMEDIR cmd args...\n", stderr);
        return 126;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail("set no_new_privs", NULL);
    status = enter_landlock(argv[1]);
    if (status != 0)
        return status;
    execvp(argv[2], argv + 2);
    status = errno == ENOENT ? 127 : 126; /* as a shell says: not found, or not runnable */
    fail("run", argv[2]);
    return status;
}
