/* The smallest process-in-the-middle for a stdio MCP server, for bench/hop.py: copies stdin to
 * the child's stdin and the child's stdout to stdout, parsing nothing.
 *
 *   relay threads CMD...   two threads, blocking reads
 *   relay epoll CMD...     one thread on epoll, the shape of Corral's own I/O loop
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

static int to_child, from_child;
static pid_t child;

static void write_all(int fd, const char *buf, ssize_t n) {
    for (ssize_t done = 0; done < n;) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w <= 0) exit(1);
        done += w;
    }
}

static void copy(int from, int to) {
    char buf[65536];
    ssize_t n;
    while ((n = read(from, buf, sizeof buf)) > 0) write_all(to, buf, n);
}

static void *upstream(void *unused) {
    (void)unused;
    copy(0, to_child);
    close(to_child);
    return NULL;
}

static int threads(void) {
    pthread_t t;
    pthread_create(&t, NULL, upstream, NULL);
    copy(from_child, 1);
    return 0;
}

static int one_epoll_thread(void) {
    fcntl(0, F_SETFL, O_NONBLOCK);
    fcntl(from_child, F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    ev.data.fd = from_child;
    epoll_ctl(ep, EPOLL_CTL_ADD, from_child, &ev);
    char buf[65536];
    struct epoll_event ready[8];
    for (;;) {
        int n = epoll_wait(ep, ready, 8, -1);
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) write_all(fd == 0 ? to_child : 1, buf, r);
            if (r == 0 && fd == 0) close(to_child);
            if (r == 0 && fd == from_child) return 0;
        }
    }
}

int main(int argc, char **argv) {
    int in[2], out[2];
    if (argc < 3 || pipe(in) || pipe(out)) return 2;
    child = fork();
    if (child == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_child = in[1];
    from_child = out[0];
    int rc = strcmp(argv[1], "epoll") == 0 ? one_epoll_thread() : threads();
    waitpid(child, NULL, 0);
    return rc;
}
