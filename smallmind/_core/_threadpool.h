/*
 * A small persistent thread pool for the matrix products, built so that the calling
 * thread never waits for a worker that has not started.
 *
 * Why not OpenMP: a parallel region ends in an implicit barrier, so the caller waits for
 * every team thread to arrive. On a 2-core machine whose second core is taken by another
 * process, the worker only runs when the scheduler gives it a slice, and a 20 us product
 * took 0.7-6 ms (decoding fell from ~270 to ~10 tokens/s).
 *
 * Here a job is `n_units` independent units of work handed out through one atomic word;
 * the caller claims work like any worker, so if no worker shows up it simply does all of
 * it. It then waits only for work a worker has already claimed (which that worker is
 * running). A claim takes one unit (smp_parallel: chunks), or, for a product split in
 * many small units (smp_parallel_range), a share of what is left that shrinks as the job
 * nears its end (guided scheduling): few claims, and the threads finish within one small
 * piece of each other. With 16 equal chunks, Gemma 3's 178 MB output matrix left one
 * thread waiting ~0.2-0.6 ms per token for the other's last 11 MB chunk. Workers spin for
 * the next job (about a millisecond), then sleep on a futex; a worker that notices, while
 * spinning, that it was descheduled stops spinning for a while (see SMP_QUIET_JOBS).
 *
 * The claim word packs (generation, first and last unclaimed unit) so that a claim is a single
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
/* TSC cycles a worker spins for the next job before it sleeps: about 0.7-1.2 ms, longer
 * than the gaps between the products of one forward pass and than the gap between two
 * decoded tokens (sampling over Gemma 3's 262k logits and the decode loop's Python, ~0.25
 * ms on a Zen 3 VM: a spin of 0.25 ms put the worker to sleep before every token, and the
 * futex wake-up took 45-60 us, longer than the token's first product). A server idle
 * between requests spins this long once, then sleeps. Counted in time, not in pause
 * instructions, whose latency differs several-fold between microarchitectures (~140 cycles
 * on Skylake and later Intel cores, ~60 TSC cycles measured on a Zen 3 VM, ~10 on older
 * cores): a count tuned on one CPU spins far shorter on another. */
#ifndef SMP_SPIN_CYCLES
#define SMP_SPIN_CYCLES 2500000
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
 * one stall (a hypervisor preemption) must not cost many tokens. So the first stall
 * makes the workers quiet for SMP_QUIET_MIN_JOBS jobs (a few layers), and each stall that
 * follows within a few such periods doubles that, up to SMP_QUIET_JOBS (a few tokens of a
 * small model): a busy machine stalls again soon and stays quiet, an idle one where a
 * stall is rare loses a few layers' second thread, not three tokens' (Gemma 3 runs 73
 * jobs a token; a 64-token decode at 2 threads on an idle Zen 3 VM saw such a stall). */
#ifndef SMP_QUIET_JOBS
#define SMP_QUIET_JOBS 256
#endif
#define SMP_QUIET_MIN_JOBS 32
/* Units are numbered in 16 bits of the claim word. */
#define SMP_MAX_CHUNKS 65535

typedef void (*smp_chunk_fn)(const void* arg, ptrdiff_t chunk);
/* Runs units [u0, u1) of a job. */
typedef void (*smp_range_fn)(const void* arg, ptrdiff_t u0, ptrdiff_t u1);

typedef struct {
    /* (generation << 32) | (front << 16) | back: units [front, back) are unclaimed */
    _Alignas(64) _Atomic uint64_t claim;
    /* units a claim of the current job takes: unclaimed / divisor within [min_take,
     * max_take], or one when divisor is 0 (read before a claim, so atomic: a late worker
     * may read the next job's, and then its compare-and-swap fails) */
    _Atomic int32_t divisor, min_take, max_take;
    /* units finished by workers in the current job */
    _Alignas(64) _Atomic ptrdiff_t done;
    /* futex word: bumped once per job, after `claim` */
    _Alignas(64) _Atomic uint32_t gen;
    _Atomic int sleepers;
    _Atomic int shutdown;
    /* workers with index < helpers take part in the current job */
    _Atomic int helpers;
    /* jobs left during which workers do not spin (contention seen), the length of the
     * last such period and the generation when it began */
    _Atomic int quiet_jobs, quiet_len;
    _Atomic uint32_t stall_gen;
    /* current job, read by a worker only after it has claimed some of it: chunk_fn for
     * each unit, or range_fn for the claimed units at once */
    smp_chunk_fn chunk_fn;
    smp_range_fn range_fn;
    const void* arg;
    /* one job at a time: held by the caller that runs it */
    _Alignas(64) _Atomic int busy;
    int n_workers; /* changed only with `busy` held and `grow_lock` */
} smp_pool;

static smp_pool smp_the_pool;
/* For benchmarks (benchmarks/decode_budget.py): jobs run with workers, of them those run
 * while the workers were quiet, and TSC cycles the caller waited for workers at their ends.
 * Written only by the caller holding `busy`. */
static uint64_t smp_stat_jobs, smp_stat_quiet_jobs, smp_stat_wait_cycles;
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

/* Claims work of generation `g`: the caller takes it from the front, workers from the
 * back, so on an idle machine each thread streams through one contiguous part of the
 * weight (as a static split would) and the two meet wherever the speeds say. Returns the
 * first unit claimed (and sets *end past the last), or -1 when the job has none left or
 * is no longer the current one. */
static inline ptrdiff_t smp_claim(smp_pool* p, uint32_t g, int from_back, ptrdiff_t* end)
{
    uint64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    const int32_t divisor = atomic_load_explicit(&p->divisor, memory_order_relaxed);
    const int32_t min_take = atomic_load_explicit(&p->min_take, memory_order_relaxed);
    const int32_t max_take = atomic_load_explicit(&p->max_take, memory_order_relaxed);
    for (;;) {
        if ((uint32_t)(w >> 32) != g) return -1;
        uint32_t front = (uint32_t)(w >> 16) & 0xFFFF, back = (uint32_t)w & 0xFFFF;
        if (front >= back) return -1;
        uint32_t take = 1;
        if (divisor > 0) {
            take = (back - front) / (uint32_t)divisor;
            if (take > (uint32_t)max_take) take = (uint32_t)max_take;
            if (take < (uint32_t)min_take) take = (uint32_t)min_take;
            if (take > back - front) take = back - front;
        }
        uint64_t next = from_back ? w - take : w + ((uint64_t)take << 16);
        if (atomic_compare_exchange_weak_explicit(&p->claim, &w, next, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            ptrdiff_t first = from_back ? back - take : front;
            *end = first + take;
            return first;
        }
    }
}

/* Runs all the work of generation g this thread can claim; returns how many units. */
static inline ptrdiff_t smp_work(smp_pool* p, uint32_t g, int from_back)
{
    ptrdiff_t u, end, ran = 0;
    while ((u = smp_claim(p, g, from_back, &end)) >= 0) {
        if (p->range_fn) p->range_fn(p->arg, u, end);
        else
            for (ptrdiff_t c = u; c < end; c++) p->chunk_fn(p->arg, c);
        ran += end - u;
    }
    return ran;
}

/* Contention seen: the workers sleep between the next jobs (SMP_QUIET_JOBS). Relaxed: the
 * caller and a worker may both call it; either's lengths will do. */
static void smp_stalled(smp_pool* p)
{
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed);
    int len = atomic_load_explicit(&p->quiet_len, memory_order_relaxed);
    uint32_t since = g - atomic_load_explicit(&p->stall_gen, memory_order_relaxed);
    len = len > 0 && since < 4u * (uint32_t)len ? 2 * len : SMP_QUIET_MIN_JOBS;
    if (len > SMP_QUIET_JOBS) len = SMP_QUIET_JOBS;
    atomic_store_explicit(&p->quiet_len, len, memory_order_relaxed);
    atomic_store_explicit(&p->stall_gen, g, memory_order_relaxed);
    atomic_store_explicit(&p->quiet_jobs, len, memory_order_relaxed);
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
                        smp_stalled(p);
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

/* The job of n_units units (see smp_pool.divisor), on the calling thread and up to
 * n_threads - 1 pool workers. */
static void smp_run_job(int n_threads, ptrdiff_t n_units, int32_t divisor, int32_t min_take,
                        int32_t max_take, smp_chunk_fn chunk_fn, smp_range_fn range_fn, const void* arg)
{
    smp_pool* p = &smp_the_pool;
    int expected = 0;
    if (n_threads <= 1 || n_units == 1 || n_units > SMP_MAX_CHUNKS ||
        !atomic_compare_exchange_strong(&p->busy, &expected, 1)) {
        if (range_fn) range_fn(arg, 0, n_units);
        else
            for (ptrdiff_t c = 0; c < n_units; c++) chunk_fn(arg, c);
        return;
    }
    smp_grow(p, n_threads - 1);
    p->chunk_fn = chunk_fn;
    p->range_fn = range_fn;
    p->arg = arg;
    atomic_store_explicit(&p->divisor, divisor, memory_order_relaxed);
    atomic_store_explicit(&p->min_take, min_take, memory_order_relaxed);
    atomic_store_explicit(&p->max_take, max_take, memory_order_relaxed);
    atomic_store_explicit(&p->helpers, n_threads - 1, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    int quiet = atomic_load_explicit(&p->quiet_jobs, memory_order_relaxed);
    if (quiet > 0) atomic_store_explicit(&p->quiet_jobs, quiet - 1, memory_order_relaxed);
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    /* release: a worker whose claim succeeds sees the job's functions, arg and done = 0 */
    atomic_store_explicit(&p->claim, ((uint64_t)g << 32) | (uint64_t)n_units, memory_order_release);
    atomic_store_explicit(&p->gen, g, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst) > 0) smp_futex_wake_all(&p->gen);

    uint64_t t0 = __rdtsc();
    ptrdiff_t mine = smp_work(p, g, 0), others = n_units - mine;
    uint64_t t1 = __rdtsc();
    /* All the work is claimed: wait for what the workers claimed (they are running it). */
    for (unsigned spin = 0; atomic_load_explicit(&p->done, memory_order_acquire) < others; spin++) {
        _mm_pause();
        if ((spin & 1023) == 1023) sched_yield();
    }
    uint64_t t2 = __rdtsc();
    smp_stat_jobs++;
    smp_stat_quiet_jobs += quiet > 0;
    smp_stat_wait_cycles += t2 - t1;
    if (others > 0) {
        /* Claimed work that takes far longer than the caller's own did means the worker was
         * preempted in the middle of it: its core is contended. */
        uint64_t waited = t2 - t1, per_unit = mine > 0 ? (t1 - t0) / (uint64_t)mine : 0;
        uint64_t expect = divisor > 0 ? per_unit * (uint64_t)(min_take > 0 ? min_take : 1) : per_unit;
        if (waited > 4 * expect + SMP_STALL_CYCLES) smp_stalled(p);
    }
    atomic_store_explicit(&p->busy, 0, memory_order_release);
}

/* Runs fn(arg, c) for every c in [0, n_chunks), on the calling thread and up to
 * n_threads - 1 pool workers, one chunk per claim; returns when all chunks are done.
 * Chunks must be independent. n_chunks must not exceed SMP_MAX_CHUNKS. */
static void smp_parallel(int n_threads, ptrdiff_t n_chunks, smp_chunk_fn fn, const void* arg)
{
    if (n_chunks > 0) smp_run_job(n_threads, n_chunks, 0, 1, 1, fn, NULL, arg);
}

/* Pieces of a range job are at most 1 / (SMP_PIECES_PER_THREAD n_threads) of it: as many
 * as equal chunks would be, so a worker descheduled in the middle of one holds up no more. */
#define SMP_PIECES_PER_THREAD 8

/* Runs fn(arg, u0, u1) over ranges that together cover [0, n_units) once each, on the
 * calling thread and up to n_threads - 1 pool workers; returns when all are done. Each
 * claim takes 1 / (2 n_threads) of the units left, within [min_take, the cap above]:
 * pieces shrink to min_take towards the end, so the threads finish within about one
 * min_take of each other. Units must be independent; n_units must not exceed
 * SMP_MAX_CHUNKS. */
static void smp_parallel_range(int n_threads, ptrdiff_t n_units, ptrdiff_t min_take, smp_range_fn fn,
                               const void* arg)
{
    if (n_units <= 0) return;
    const ptrdiff_t pieces = SMP_PIECES_PER_THREAD * (ptrdiff_t)(n_threads > 1 ? n_threads : 1);
    ptrdiff_t max_take = (n_units + pieces - 1) / pieces;
    if (min_take > max_take) min_take = max_take;
    if (min_take < 1) min_take = 1;
    smp_run_job(n_threads, n_units, 2 * n_threads, (int32_t)min_take, (int32_t)max_take, NULL, fn, arg);
}

#endif
