/* spawnbench: run several command lines alternately N times each (posix_spawn + waitpid, no
 * Python in the way); print p50/p95 of each in microseconds.
 *   spawnbench N 'argv0 arg...' 'argv0 arg...' ...   (each command line split on spaces) */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int n = atoi(argv[1]), k = argc - 2;
    char **cmds[16];
    double *t[16];
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    for (int c = 0; c < k; c++) {
        char *copy = strdup(argv[c + 2]);
        cmds[c] = calloc(256, sizeof(char *));
        int i = 0;
        for (char *tok = strtok(copy, " "); tok && i < 255; tok = strtok(NULL, " "))
            cmds[c][i++] = tok;
        t[c] = calloc(n, sizeof(double));
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < k; c++) {
            struct timespec a, b;
            pid_t pid;
            int status;
            clock_gettime(CLOCK_MONOTONIC, &a);
            if (posix_spawn(&pid, cmds[c][0], NULL, NULL, cmds[c], environ) != 0) {
                perror("spawn");
                return 1;
            }
            waitpid(pid, &status, 0);
            clock_gettime(CLOCK_MONOTONIC, &b);
            if (status != 0) {
                fprintf(stderr, "%s: status %d\n", cmds[c][0], status);
                return 1;
            }
            while (waitpid(-1, &status, WNOHANG) > 0) { /* inits we inherited */
            }
            t[c][i] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
        }
    for (int c = 0; c < k; c++) {
        qsort(t[c], n, sizeof(double), cmp);
        printf("p50 %8.0f us  p95 %8.0f us  %s\n", t[c][n / 2], t[c][n * 95 / 100], argv[c + 2]);
    }
    return 0;
}
