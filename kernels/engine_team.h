/* The thread team that shares one image: dynamic chunk claiming, so nobody waits for a late member.
 *
 * An image runs as phases (engine_c.h: the input stage, then the ops); every phase is cut into
 * chunks (a few per member) that members claim from an atomic counter, and a phase starts once
 * every chunk of the one before is done. A helper that is late (its core busy with another
 * process) claims nothing and the caller does the work; one preempted in the middle of a chunk
 * delays only that chunk. Waits spin briefly, then sleep on a futex, so a waiting member frees
 * its core (where the scheduler can resume the late one). The claim words carry the image's
 * generation, so a helper still looking for work in the previous image can never take a chunk
 * of the next. Results do not depend on who runs which chunk.
 */
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
#elif defined(__aarch64__) && defined(__GNUC__)
#define SFPN_SPIN_PAUSE() __asm__ __volatile__("yield")
#else
#define SFPN_SPIN_PAUSE() ((void)0)
#endif

#define SFPN_ENGINE_MAX_THREADS 64
#define SFPN_TEAM_MAX_PHASES 8200   /* 4096 ops (engine.pyx's bound) + input stage + gap_prep */
#define SFPN_TEAM_SPIN 4000         /* polls before a wait sleeps (~10-40 us) */

typedef struct sfpn_team sfpn_team;
typedef struct { sfpn_team *team; int tid; } sfpn_member;

struct sfpn_team {
    const sfpn_eplan *pl;
    const float *x;
    float *out, *sums;
    uint8_t *arena;
    int n;                          /* members, the caller included */
    int nphase;                     /* phases of the current image */
    _Atomic uint32_t gen;           /* image generation */
    _Atomic int job, stop;          /* bumped per image (the word idle workers sleep on); shutdown */
    _Atomic int sleepers;           /* members asleep on a done word */
    _Atomic uint64_t claim[SFPN_TEAM_MAX_PHASES];   /* gen << 32 | chunks claimed */
    _Atomic int done[SFPN_TEAM_MAX_PHASES];         /* chunks finished */
    int chunks[SFPN_TEAM_MAX_PHASES];
    pthread_t workers[SFPN_ENGINE_MAX_THREADS];
    sfpn_member members[SFPN_ENGINE_MAX_THREADS];
    int started;                    /* workers running */
};

/* The phases of an image (engine_c.h). */
static int sfpn_nphase(const sfpn_eplan *pl, int stop);
static int sfpn_phase_chunks(const sfpn_eplan *pl, int phase, int members);
static void sfpn_phase_run(const sfpn_eplan *pl, int phase, const float *x, float *out, uint8_t *arena, float *sums,
                           sfpn_part part);

static void sfpn_futex_wait(_Atomic int *word, int seen) {
#ifdef __linux__
    syscall(SYS_futex, (int *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    (void)word;
    (void)seen;
    sched_yield();
#endif
}

static void sfpn_wake_all(_Atomic int *word) {
#ifdef __linux__
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, SFPN_ENGINE_MAX_THREADS, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Wait until *word != seen (a worker between images): spin, then sleep. */
static void sfpn_wait_change(_Atomic int *word, int seen) {
    for (int spin = 0; spin < SFPN_TEAM_SPIN; spin++) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) return;
        SFPN_SPIN_PAUSE();
    }
    while (atomic_load_explicit(word, memory_order_acquire) == seen) sfpn_futex_wait(word, seen);
}

/* Wait until every chunk of phase p is done: spin, then sleep (the last finisher wakes sleepers). */
static void sfpn_wait_done(sfpn_team *t, int p) {
    int want = t->chunks[p];
    for (int spin = 0; spin < SFPN_TEAM_SPIN; spin++) {
        if (atomic_load_explicit(&t->done[p], memory_order_acquire) == want) return;
        SFPN_SPIN_PAUSE();
    }
    atomic_fetch_add(&t->sleepers, 1);
    for (;;) {
        int seen = atomic_load(&t->done[p]);
        if (seen == want) break;
        sfpn_futex_wait(&t->done[p], seen);
    }
    atomic_fetch_sub(&t->sleepers, 1);
}

/* Claim and run chunks of image ``gen`` until none is left, phase by phase. Returns when the image
 * is complete (the caller) or when this member finds it is no longer the current image. */
static void sfpn_team_work(sfpn_team *t, uint32_t gen) {
    for (int p = 0; p < t->nphase; p++) {
        int n = t->chunks[p];
        for (;;) {
            uint64_t c = atomic_load_explicit(&t->claim[p], memory_order_acquire);
            if ((uint32_t)(c >> 32) != gen) return;   /* a later image has begun */
            if ((int)(uint32_t)c >= n) break;
            if (!atomic_compare_exchange_weak(&t->claim[p], &c, c + 1)) continue;
            sfpn_part part = {(int)(uint32_t)c, n};
            sfpn_phase_run(t->pl, p, t->x, t->out, t->arena, t->sums, part);
            if (atomic_fetch_add(&t->done[p], 1) + 1 == n && atomic_load(&t->sleepers) > 0)
                sfpn_wake_all(&t->done[p]);
        }
        sfpn_wait_done(t, p);
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
        sfpn_team_work(t, atomic_load_explicit(&t->gen, memory_order_acquire));
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

/* One image on the whole team; returns when it is complete. Every chunk of the previous image is
 * done by then, so the shared fields are free to change: workers still in that image only read
 * claim words, whose generation turns them away. */
static void sfpn_team_run(sfpn_team *t, const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena,
                          float *sums) {
    uint32_t gen = atomic_load_explicit(&t->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&t->gen, gen, memory_order_relaxed);
    t->pl = pl;
    t->x = x;
    t->out = out;
    t->arena = arena;
    t->sums = sums;
    t->nphase = sfpn_nphase(pl, pl->nop);
    for (int p = 0; p < t->nphase; p++) {
        t->chunks[p] = sfpn_phase_chunks(pl, p, t->n);
        atomic_store_explicit(&t->done[p], 0, memory_order_relaxed);
        atomic_store_explicit(&t->claim[p], (uint64_t)gen << 32, memory_order_release);
    }
    atomic_fetch_add(&t->job, 1);   /* seq_cst: everything above is visible to a woken worker */
    sfpn_wake_all(&t->job);
    sfpn_team_work(t, gen);
}

#endif
