/* The thread team that shares one image, and its futex barrier. */
#ifndef SFPN_ENGINE_TEAM_H
#define SFPN_ENGINE_TEAM_H
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include "engine_plan.h"
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SFPN_SPIN_PAUSE() _mm_pause()
#else
#define SFPN_SPIN_PAUSE() ((void)0)
#endif

#define SFPN_ENGINE_MAX_THREADS 64

/* Threads that run one image together. Idle members sleep on a futex (Linux; elsewhere they
 * yield): a team never keeps a core busy between images. */
typedef struct { sfpn_team *team; int tid; } sfpn_member;

struct sfpn_team {
    const sfpn_eplan *pl;
    const float *x;
    float *out, *sums;
    uint8_t *arena;
    int n;                          /* members, the caller included */
    _Atomic int arrived, phase;     /* barrier */
    _Atomic int job, stop;          /* job counter the workers wait on; shutdown flag */
    pthread_t workers[SFPN_ENGINE_MAX_THREADS];
    sfpn_member members[SFPN_ENGINE_MAX_THREADS];
    int started;                    /* workers running */
};

/* One member's part of an image (engine_c.h). */
static void sfpn_engine_part(const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena, float *sums,
                             sfpn_part part, sfpn_team *team, int stop);

/* Wait until *word != seen: a short spin (the partner is usually microseconds away), then a few
 * yields (a busy machine may have put the partner on this core), then sleep on the futex. */
static void sfpn_wait_change(_Atomic int *word, int seen) {
    for (int spin = 0; spin < 2000; spin++) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) return;
        SFPN_SPIN_PAUSE();
    }
    for (int yield = 0; yield < 20; yield++) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) return;
        sched_yield();
    }
    while (atomic_load_explicit(word, memory_order_acquire) == seen) {
#ifdef __linux__
        syscall(SYS_futex, (int *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
}

static void sfpn_wake_all(_Atomic int *word) {
#ifdef __linux__
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, SFPN_ENGINE_MAX_THREADS, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static void sfpn_barrier(sfpn_team *t) {
    if (t == NULL || t->n == 1) return;
    int phase = atomic_load_explicit(&t->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&t->arrived, 1, memory_order_acq_rel) == t->n - 1) {
        atomic_store_explicit(&t->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&t->phase, 1, memory_order_release);
        sfpn_wake_all(&t->phase);
    } else {
        sfpn_wait_change(&t->phase, phase);
    }
}

static void *sfpn_team_worker(void *arg) {
    sfpn_member *m = (sfpn_member *)arg;
    sfpn_team *t = m->team;
    int seen = 0;
    for (;;) {
        sfpn_wait_change(&t->job, seen);
        seen = atomic_load_explicit(&t->job, memory_order_acquire);
        if (atomic_load_explicit(&t->stop, memory_order_acquire)) return NULL;
        sfpn_part part = {m->tid, t->n};
        sfpn_engine_part(t->pl, t->x, t->out, t->arena, t->sums, part, t, t->pl->nop);
    }
}

static void sfpn_team_stop(sfpn_team *t) {
    atomic_store_explicit(&t->stop, 1, memory_order_release);
    atomic_fetch_add_explicit(&t->job, 1, memory_order_release);
    sfpn_wake_all(&t->job);
    for (int i = 0; i < t->started; i++) pthread_join(t->workers[i], NULL);
    t->started = 0;
}

/* Start n - 1 workers (the caller is member 0). Returns 0, or -1 if a thread could not start. */
static int sfpn_team_start(sfpn_team *t, int n) {
    memset(t, 0, sizeof(*t));
    t->n = n;
    for (int i = 1; i < n; i++) {
        t->members[i].team = t;
        t->members[i].tid = i;
        if (pthread_create(&t->workers[t->started], NULL, sfpn_team_worker, &t->members[i]) != 0) {
            sfpn_team_stop(t);
            return -1;
        }
        t->started++;
    }
    return 0;
}

/* One image on the whole team. */
static void sfpn_team_run(sfpn_team *t, const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena,
                          float *sums) {
    t->pl = pl;
    t->x = x;
    t->out = out;
    t->arena = arena;
    t->sums = sums;
    atomic_fetch_add_explicit(&t->job, 1, memory_order_release);
    sfpn_wake_all(&t->job);
    sfpn_part lead = {0, t->n};
    sfpn_engine_part(pl, x, out, arena, sums, lead, t, pl->nop);
}

#endif
