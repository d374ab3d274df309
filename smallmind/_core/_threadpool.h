/*
 * A small persistent thread pool for the matrix products, built so that the calling
 * thread never waits for a worker that has not started.
 *
 * Why not OpenMP: a parallel region ends in an implicit barrier, so the caller waits for
 * every team thread to arrive. On a 2-core machine whose second core is taken by another
 * process, the worker only runs when the scheduler gives it a slice, and a 20 us product
 * took 0.7-6 ms (decoding fell from ~270 to ~10 tokens/s).
 *
 * Here a job is `n_chunks` independent chunks handed out through one atomic word; the
 * caller claims chunks like any worker, so if no worker shows up it simply does all of
 * them. It then waits only for chunks a worker has already claimed (which that worker is
 * running). Workers spin briefly for the next job, then sleep on a futex; a worker that
 * notices, while spinning, that it was descheduled stops spinning for a while (see
 * SMP_QUIET_JOBS).
 *
 * The claim word packs (generation, first and last unclaimed chunk) so that a claim is a single
 * compare-and-swap that can only succeed for the job it was meant for: a worker that
 * wakes late, after its job finished and a new one was published, fails the CAS instead of
 * running a chunk of the new job with the old job's arguments. A job's arguments are read
 * only after a successful claim, and the caller cannot return (and so cannot free or
 * overwrite them) until every claimed chunk has been counted done.
 *
 * One job runs at a time; a second caller (another Python thread) that finds the pool
 * busy runs its chunks itself. Workers are detached and never joined: they sleep in the
 * kernel between jobs, so interpreter exit does not wait for them. The pool is global,
 * created on first use and grown to the largest thread count asked for (capped).
 */
#ifndef SMALLMIND_THREADPOOL_H
#define SMALLMIND_THREADPOOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <immintrin.h>
#include <x86intrin.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <time.h>
#endif

/* Most helper threads the pool will ever start (the caller is one more). */
#define SMP_MAX_WORKERS 63
/* TSC cycles a worker spins for the next job before it sleeps: about 0.15-0.3 ms, longer
 * than the gaps between the products of one forward pass. Counted in time, not in pause
 * instructions, whose latency differs several-fold between microarchitectures (~140 cycles
 * on Skylake and later Intel cores, ~60 TSC cycles measured on a Zen 3 VM, ~10 on older
 * cores): a count tuned on one CPU spins far shorter on another. */
#ifndef SMP_SPIN_CYCLES
#define SMP_SPIN_CYCLES 600000
#endif
/* TSC cycles between two sched_yield calls of a spinning worker (~10-20 us). */
#define SMP_YIELD_CYCLES 40000
/* A spinning worker that finds this many TSC cycles (~30-100 us) between two looks at the
 * job counter, 16 pauses apart, was descheduled: another process wants its core. */
#define SMP_STALL_CYCLES 200000
/* Jobs for which workers then sleep at once instead of spinning. A spinning worker burns
 * its fair share of a contended core and is then preempted, often in the middle of a
 * chunk the caller must wait for; one that sleeps is woken with priority and finishes
 * its chunk (measured on 2 busy cores: Q4_1 n=64 sweep 70 ms sleeping, 85-100 spinning).
 * On an idle machine sleeping costs a futex wake per job, and in a VM the wake-up of a
 * halted vCPU takes tens of microseconds, so the caller does most of each product alone:
 * one stall (a hypervisor preemption) must not cost many tokens. About one token of a
 * small model's products (7 per layer); a busy machine stalls again soon and stays quiet. */
#ifndef SMP_QUIET_JOBS
#define SMP_QUIET_JOBS 256
#endif
/* Chunks are numbered in 16 bits of the claim word. */
#define SMP_MAX_CHUNKS 65535

typedef void (*smp_chunk_fn)(const void* arg, ptrdiff_t chunk);

typedef struct {
    /* (generation << 32) | (front << 16) | back: chunks [front, back) are unclaimed */
    _Alignas(64) _Atomic uint64_t claim;
    /* chunks finished by workers in the current job */
    _Alignas(64) _Atomic ptrdiff_t done;
    /* futex word: bumped once per job, after `claim` */
    _Alignas(64) _Atomic uint32_t gen;
    _Atomic int sleepers;
    _Atomic int shutdown;
    /* workers with index < helpers take part in the current job */
    _Atomic int helpers;
    /* jobs left during which workers do not spin (contention seen) */
    _Atomic int quiet_jobs;
    /* current job, read by a worker only after it has claimed one of its chunks */
    smp_chunk_fn fn;
    const void* arg;
    /* one job at a time: held by the caller that runs it */
    _Alignas(64) _Atomic int busy;
    int n_workers; /* changed only with `busy` held and `grow_lock` */
} smp_pool;

static smp_pool smp_the_pool;
static pthread_mutex_t smp_grow_lock = PTHREAD_MUTEX_INITIALIZER;
static int smp_atfork_registered = 0;

static inline void smp_futex_wait(_Atomic uint32_t* word, uint32_t expected)
{
#ifdef __linux__
    syscall(SYS_futex, (uint32_t*)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
    (void)word;
    (void)expected;
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
#endif
}

static inline void smp_futex_wake_all(_Atomic uint32_t* word)
{
#ifdef __linux__
    syscall(SYS_futex, (uint32_t*)word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* Claims a chunk of generation `g`: the caller takes them from the front, workers from
 * the back, so on an idle machine each thread streams through one contiguous part of the
 * weight (as a static split would) and the two meet wherever the speeds say. Returns the
 * chunk, or -1 when the job has none left or is no longer the current one. */
static inline ptrdiff_t smp_claim(smp_pool* p, uint32_t g, int from_back)
{
    uint64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(w >> 32) != g) return -1;
        uint32_t front = (uint32_t)(w >> 16) & 0xFFFF, back = (uint32_t)w & 0xFFFF;
        if (front >= back) return -1;
        uint64_t next = from_back ? w - 1 : w + ((uint64_t)1 << 16);
        if (atomic_compare_exchange_weak_explicit(&p->claim, &w, next, memory_order_acq_rel,
                                                  memory_order_acquire))
            return (ptrdiff_t)(from_back ? back - 1 : front);
    }
}

/* Runs every chunk of generation g this thread can claim; returns how many. */
static inline ptrdiff_t smp_work(smp_pool* p, uint32_t g, int from_back)
{
    ptrdiff_t c, ran = 0;
    while ((c = smp_claim(p, g, from_back)) >= 0) {
        p->fn(p->arg, c);
        ran++;
    }
    return ran;
}

static void* smp_worker_main(void* index_ptr)
{
    smp_pool* p = &smp_the_pool;
    const int index = (int)(intptr_t)index_ptr;
    uint32_t seen = atomic_load_explicit(&p->gen, memory_order_acquire);
    for (;;) {
        uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load_explicit(&p->quiet_jobs, memory_order_relaxed) == 0) {
            const uint64_t start = __rdtsc();
            uint64_t last = start, last_yield = start;
            for (unsigned spin = 1; g == seen; spin++) {
                _mm_pause();
                g = atomic_load_explicit(&p->gen, memory_order_acquire);
                if ((spin & 15) == 0) {
                    uint64_t now = __rdtsc();
                    if (now - last > SMP_STALL_CYCLES) {
                        atomic_store_explicit(&p->quiet_jobs, SMP_QUIET_JOBS, memory_order_relaxed);
                        break;
                    }
                    if (now - start > SMP_SPIN_CYCLES) break;
                    /* let another runnable thread of this process (an OpenMP worker
                     * still spinning, the caller) have the core if it shares ours */
                    if (now - last_yield > SMP_YIELD_CYCLES) {
                        sched_yield();
                        now = last_yield = __rdtsc();
                    }
                    last = now;
                }
            }
        }
        while (g == seen) {
            /* Dekker pairing with smp_parallel: either the caller sees sleepers > 0
             * and wakes us, or the futex sees the new generation and returns at once. */
            atomic_fetch_add_explicit(&p->sleepers, 1, memory_order_seq_cst);
            smp_futex_wait(&p->gen, seen);
            atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_seq_cst);
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        seen = g;
        if (atomic_load_explicit(&p->shutdown, memory_order_acquire)) return NULL;
        if (index < atomic_load_explicit(&p->helpers, memory_order_relaxed)) {
            /* Counted once, after the last claim failed: one contended write per job
             * rather than per chunk. The job cannot finish before this add, so `done`
             * still belongs to generation g. */
            ptrdiff_t ran = smp_work(p, g, 1);
            if (ran) atomic_fetch_add_explicit(&p->done, ran, memory_order_release);
        }
    }
}

/* In a forked child the workers are gone: start over with none. */
static void smp_after_fork_child(void)
{
    smp_pool* p = &smp_the_pool;
    p->n_workers = 0;
    atomic_store(&p->busy, 0);
    atomic_store(&p->sleepers, 0);
    pthread_mutex_init(&smp_grow_lock, NULL);
}

/* Starts workers up to `want` (with `busy` held, so no job is in flight). */
static void smp_grow(smp_pool* p, int want)
{
    if (want > SMP_MAX_WORKERS) want = SMP_MAX_WORKERS;
    if (p->n_workers >= want) return;
    pthread_mutex_lock(&smp_grow_lock);
    if (!smp_atfork_registered) {
        pthread_atfork(NULL, NULL, smp_after_fork_child);
        smp_atfork_registered = 1;
    }
    while (p->n_workers < want) {
        pthread_attr_t attr;
        pthread_t tid;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&tid, &attr, smp_worker_main, (void*)(intptr_t)p->n_workers);
        pthread_attr_destroy(&attr);
        if (err != 0) break; /* run with the workers we have */
        p->n_workers++;
    }
    pthread_mutex_unlock(&smp_grow_lock);
}

/* Whether the workers spin between jobs (no contention seen lately): a job then costs
 * ~0.25 us beyond its work (Zen 3 VM); while they sleep (SMP_QUIET_JOBS) each job wakes
 * them through the kernel, which only a job of tens of microseconds repays. */
static inline int smp_workers_spin(void)
{
    return atomic_load_explicit(&smp_the_pool.quiet_jobs, memory_order_relaxed) == 0;
}

/* Runs fn(arg, c) for every c in [0, n_chunks), on the calling thread and up to
 * n_threads - 1 pool workers; returns when all chunks are done. Chunks must be
 * independent. n_chunks must not exceed SMP_MAX_CHUNKS. */
static void smp_parallel(int n_threads, ptrdiff_t n_chunks, smp_chunk_fn fn, const void* arg)
{
    smp_pool* p = &smp_the_pool;
    if (n_chunks <= 0) return;
    int expected = 0;
    if (n_threads <= 1 || n_chunks == 1 || n_chunks > SMP_MAX_CHUNKS ||
        !atomic_compare_exchange_strong(&p->busy, &expected, 1)) {
        for (ptrdiff_t c = 0; c < n_chunks; c++) fn(arg, c);
        return;
    }
    smp_grow(p, n_threads - 1);
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->helpers, n_threads - 1, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    int quiet = atomic_load_explicit(&p->quiet_jobs, memory_order_relaxed);
    if (quiet > 0) atomic_store_explicit(&p->quiet_jobs, quiet - 1, memory_order_relaxed);
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    /* release: a worker whose claim succeeds sees fn, arg and done = 0 */
    atomic_store_explicit(&p->claim, ((uint64_t)g << 32) | (uint64_t)n_chunks, memory_order_release);
    atomic_store_explicit(&p->gen, g, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst) > 0) smp_futex_wake_all(&p->gen);

    uint64_t t0 = __rdtsc();
    ptrdiff_t mine = smp_work(p, g, 0), others = n_chunks - mine;
    uint64_t t1 = __rdtsc();
    /* Every chunk is claimed: wait for those workers claimed (they are running them). */
    for (unsigned spin = 0; atomic_load_explicit(&p->done, memory_order_acquire) < others; spin++) {
        _mm_pause();
        if ((spin & 1023) == 1023) sched_yield();
    }
    if (others > 0) {
        /* A claimed chunk that takes far longer than the caller's own chunks did means the
         * worker was preempted in the middle of it: its core is contended. */
        uint64_t waited = __rdtsc() - t1, per_chunk = mine > 0 ? (t1 - t0) / (uint64_t)mine : 0;
        if (waited > 4 * per_chunk + SMP_STALL_CYCLES)
            atomic_store_explicit(&p->quiet_jobs, SMP_QUIET_JOBS, memory_order_relaxed);
    }
    atomic_store_explicit(&p->busy, 0, memory_order_release);
}

#endif
