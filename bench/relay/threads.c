/* The smallest process-in-the-middle for a stdio MCP server: two threads with blocking reads,
 * copying stdin to the child's stdin and the child's stdout to stdout, parsing nothing.
 * bench/hop.py measures it next to Corral to show what any extra hop costs on this machine. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int to_child, from_child;

static void copy(int from, int to) {
    char buf[65536];
    ssize_t n;
    while ((n = read(from, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(to, buf + done, n - done);
            if (w <= 0) exit(1);
            done += w;
        }
    }
}

static void *upstream(void *unused) {
    (void)unused;
    copy(0, to_child);
    close(to_child);
    return NULL;
}

int main(int argc, char **argv) {
    int in[2], out[2];
    if (argc < 2 || pipe(in) || pipe(out)) return 2;
    pid_t child = fork();
    if (child == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execvp(argv[1], argv + 1);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_child = in[1];
    from_child = out[0];
    pthread_t t;
    pthread_create(&t, NULL, upstream, NULL);
    copy(from_child, 1);
    waitpid(child, NULL, 0);
    return 0;
}
