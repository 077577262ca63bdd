#include "core/prefork.h"
#include "core/backoff.h"
#include "core/core.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

/* A worker that dies sooner than this after its start counts as a crash loop. */
#define STABLE_MS 2000

typedef struct {
    pid_t pid;
    uint64_t started_ms;
    uint64_t restart_at_ms; /* 0: not waiting for a restart */
    core_backoff_t backoff;
} slot_t;

int core_reuseport_socket(const char *host, int port, int *fd_out)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
        len = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        len = sizeof(struct sockaddr_in6);
    } else {
        return UV_EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *fd_out = fd;
    return 0;
}

static pid_t spawn(const core_prefork_opts_t *o, int index, sigset_t *oldmask)
{
    pid_t master = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Worker: dies with the master, so that a killed master leaves no orphans. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != master)
        _exit(0);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_IGN); /* ^C reaches the whole group: the master decides */
    core_log_set_worker(index);
    int rc = o->worker_main(index, o->ud);
    core_log_flush();
    /* exit, not _exit: the sanitizer build checks the worker for leaks at exit. */
    exit(rc);
}

static void describe(int status, char *buf, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exit=%d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "signal=%d", WTERMSIG(status));
    else
        snprintf(buf, cap, "status=%d", status);
}

int core_prefork_run(const core_prefork_opts_t *o)
{
    /* Reserve the port (same-uid SO_REUSEPORT group) and fail early if it is taken.
     * This socket never listens, so the kernel never hands it a connection. */
    int guard_fd;
    int rc = core_reuseport_socket(o->host, o->port, &guard_fd);
    if (rc) {
        core_log_error("prefork.bind_failed", "host=%s port=%d error=\"%s\"", o->host, o->port,
                       uv_strerror(rc));
        return 1;
    }

    sigset_t mask, oldmask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, &oldmask);

    slot_t *slots = core_xcalloc((size_t)o->workers, sizeof *slots);
    for (int i = 0; i < o->workers; i++) {
        core_backoff_init(&slots[i].backoff, 100, 5000);
        slots[i].pid = spawn(o, i, &oldmask);
        slots[i].started_ms = core_now_ms();
        core_log_info("prefork.worker_started", "index=%d pid=%d", i, (int)slots[i].pid);
    }
    core_log_info("prefork.started", "name=%s workers=%d host=%s port=%d", o->name, o->workers,
                  o->host, o->port);

    bool stopping = false;
    uint64_t deadline = 0;
    int exit_code = 0;
    for (;;) {
        int alive = 0;
        uint64_t now = core_now_ms();
        uint64_t next_wake = now + 1000;
        for (int i = 0; i < o->workers; i++) {
            if (slots[i].pid > 0)
                alive++;
            if (!stopping && slots[i].pid <= 0 && slots[i].restart_at_ms) {
                if (slots[i].restart_at_ms <= now) {
                    slots[i].restart_at_ms = 0;
                    slots[i].pid = spawn(o, i, &oldmask);
                    slots[i].started_ms = core_now_ms();
                    alive++;
                    core_log_info("prefork.worker_restarted", "index=%d pid=%d", i,
                                  (int)slots[i].pid);
                } else if (slots[i].restart_at_ms < next_wake) {
                    next_wake = slots[i].restart_at_ms;
                }
            }
        }
        if (stopping && alive == 0)
            break;
        if (stopping && now >= deadline) {
            for (int i = 0; i < o->workers; i++) {
                if (slots[i].pid > 0) {
                    core_log_warn("prefork.drain_timeout", "index=%d pid=%d action=kill", i,
                                  (int)slots[i].pid);
                    kill(slots[i].pid, SIGKILL);
                }
            }
            exit_code = 1;
            deadline = now + 5000;
        }
        if (stopping && deadline < next_wake)
            next_wake = deadline;

        uint64_t wait_ms = next_wake > now ? next_wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait_ms / 1000),
                              .tv_nsec = (long)(wait_ms % 1000) * 1000000L};
        int sig = sigtimedwait(&mask, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                stopping = true;
                deadline = core_now_ms() + o->drain_timeout_ms + 2000;
                core_log_info("prefork.stopping", "signal=%d workers=%d", sig, alive);
                for (int i = 0; i < o->workers; i++)
                    if (slots[i].pid > 0)
                        kill(slots[i].pid, SIGTERM);
            }
        } else if (sig == SIGHUP) {
            core_log_info("prefork.sighup_ignored", "");
        }
        /* Reap on every wake: SIGCHLD coalesces. */
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (int i = 0; i < o->workers; i++) {
                if (slots[i].pid != pid)
                    continue;
                slots[i].pid = 0;
                char how[32];
                describe(status, how, sizeof how);
                if (stopping) {
                    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        exit_code = 1;
                    core_log_info("prefork.worker_exited", "index=%d pid=%d %s", i, (int)pid, how);
                    break;
                }
                uint64_t lived = core_now_ms() - slots[i].started_ms;
                if (lived >= STABLE_MS)
                    core_backoff_reset(&slots[i].backoff);
                uint32_t delay = lived >= STABLE_MS ? 0 : core_backoff_next(&slots[i].backoff);
                slots[i].restart_at_ms = core_now_ms() + delay + 1;
                core_log_warn("prefork.worker_died",
                              "index=%d pid=%d %s lived_ms=%llu restart_in_ms=%u", i, (int)pid, how,
                              (unsigned long long)lived, delay);
                break;
            }
        }
    }
    free(slots);
    close(guard_fd);
    core_log_info("prefork.stopped", "exit=%d", exit_code);
    core_log_flush();
    return exit_code;
}
