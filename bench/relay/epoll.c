/* The same relay as threads.c on one thread with epoll, the shape of Corral's own I/O loop
 * (a single-threaded async runtime). Parses nothing. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

static void write_all(int fd, const char *buf, ssize_t n) {
    for (ssize_t done = 0; done < n;) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w <= 0) exit(1);
        done += w;
    }
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
    fcntl(0, F_SETFL, O_NONBLOCK);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    ev.data.fd = out[0];
    epoll_ctl(ep, EPOLL_CTL_ADD, out[0], &ev);
    char buf[65536];
    struct epoll_event ready[8];
    for (;;) {
        int n = epoll_wait(ep, ready, 8, -1);
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0) write_all(fd == 0 ? in[1] : 1, buf, r);
            if (r == 0 && fd == 0) close(in[1]);
            if (r == 0 && fd == out[0]) {
                waitpid(child, NULL, 0);
                return 0;
            }
        }
    }
}
