"""Attention / RoPE / buffer pool / KV cache micro-benchmarks vs plain NumPy.

    python benchmarks/bench_attention.py [--quick] [--threads 1,2] [--json PATH]

Times are the best of several repeats of the Python call (including its ~1 us argument
checking): "smallmind µs" is one thread, in microseconds of thread CPU time; with
--threads, attention is also timed in wall-clock microseconds at each thread count
(n_threads=1 included, so the ratio is from the same run). Prints a markdown table and
writes JSON (default benchmarks/results/attention.json).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import smallmind  # noqa: E402,F401
from smallmind._core._attention import attention, rope, rope_inv_freq  # noqa: E402
from smallmind._core._pool import BufferPool  # noqa: E402
from smallmind.kv_cache import KVCache  # noqa: E402


def best_us(fn, number: int, repeat: int) -> float:
    # Thread CPU time, not wall time: on a shared machine it leaves out the time
    # this thread spent descheduled, so repeated runs agree much better.
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time)) \
        / number * 1e6


def numpy_attention(q, k, v, pos0, n_head, n_kv_head):
    """The obvious float32 NumPy version (causal mask, stable softmax), GQA by reshape."""
    n_q, hd = q.shape[0], k.shape[2]
    n_keys = pos0 + n_q
    group = n_head // n_kv_head
    qh = q.reshape(n_q, n_kv_head, group, hd).transpose(1, 2, 0, 3)      # (kv, g, n_q, hd)
    s = qh @ k[:, None, :n_keys].transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd))
    if n_q > 1:
        mask = np.arange(n_keys)[None, :] > (pos0 + np.arange(n_q))[:, None]
        s[..., mask] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    o = s @ v[:, None, :n_keys]                                          # (kv, g, n_q, hd)
    return o.transpose(2, 0, 1, 3).reshape(n_q, n_head * hd)


def best_wall_us(fn, number: int, repeat: int) -> float:
    # Wall time: the thread pool's workers do not show in the caller's CPU time.
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.perf_counter)) / number * 1e6


def bench_attention(quick: bool, threads: list[int]):
    rng = np.random.default_rng(0)
    rows = []
    configs = [  # (n_head, n_kv_head, head_dim, n_q, positions)
        (4, 4, 32, 1, 64), (4, 4, 32, 1, 512),
        (8, 4, 8, 1, 64), (8, 4, 8, 1, 512),
        (9, 3, 64, 1, 64), (9, 3, 64, 1, 512),
        (4, 1, 256, 1, 512),
        (4, 4, 32, 128, 128), (9, 3, 64, 128, 512),
        (9, 3, 64, 256, 256), (4, 1, 256, 256, 256),  # 256-token prompts of SmolLM2, Gemma 3
    ]
    for n_head, n_kv, hd, n_q, n_pos in configs:
        pos0 = n_pos - n_q
        q = rng.standard_normal((n_q, n_head * hd)).astype(np.float32)
        k = rng.standard_normal((n_kv, n_pos, hd)).astype(np.float32)
        v = rng.standard_normal((n_kv, n_pos, hd)).astype(np.float32)
        out = np.empty_like(q)
        ref = numpy_attention(q, k, v, pos0, n_head, n_kv)
        got = attention(q, k, v, pos0, n_head, n_kv, out=out)
        err = float(np.max(np.abs(got - ref)))
        work = n_head * hd * n_q * n_pos
        number = max(5, int(2e7 / work / (10 if quick else 1)))
        t_sm = best_us(lambda: attention(q, k, v, pos0, n_head, n_kv, out=out), number, 5)
        t_np = best_us(lambda: numpy_attention(q, k, v, pos0, n_head, n_kv),
                       max(3, number // 10), 5)
        row = dict(kernel="attention", case=f"{n_head}x{hd} (kv {n_kv}), {n_q} q over "
                   f"{n_pos} pos", smallmind_us=t_sm, numpy_us=t_np,
                   speedup=t_np / t_sm, max_abs_err=err)
        for nt in threads:
            row[f"wall_us_{nt}t"] = best_wall_us(
                lambda: attention(q, k, v, pos0, n_head, n_kv, out=out, n_threads=nt), number, 5)
        rows.append(row)
    # The Python wrapper's fixed cost: one head of one dim over one position.
    q1, k1 = np.zeros((1, 1), np.float32), np.zeros((1, 1, 1), np.float32)
    o1 = np.empty_like(q1)
    rows.append(dict(kernel="attention", case="call overhead (1 head, dim 1, 1 pos)",
                     smallmind_us=best_us(lambda: attention(q1, k1, k1, 0, 1, 1, out=o1),
                                          20000, 5), numpy_us=None, speedup=None,
                     max_abs_err=None))
    return rows


def numpy_rope(x, pos0, n_heads, hd, inv_freq):
    ang = (pos0 + np.arange(x.shape[0]))[:, None] * inv_freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    xh = x.reshape(x.shape[0], n_heads, hd)
    a, b = xh[..., 0::2], xh[..., 1::2]
    out = np.empty_like(xh)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out.reshape(x.shape)


def bench_rope(quick: bool):
    rng = np.random.default_rng(1)
    rows = []
    for n_rows, n_heads, hd in [(1, 4, 32), (1, 9, 64), (128, 9, 64)]:
        inv = rope_inv_freq(hd, 10000.0)
        x = rng.standard_normal((n_rows, n_heads * hd)).astype(np.float32)
        number = max(20, int(2e6 / (n_rows * n_heads * hd) / (10 if quick else 1)))
        t_sm = best_us(lambda: rope(x, 100.0, n_heads, hd, inv), number, 5)
        t_np = best_us(lambda: numpy_rope(x, 100.0, n_heads, hd, inv), max(3, number // 10), 5)
        rows.append(dict(kernel="rope", case=f"{n_rows} rows x {n_heads}x{hd}", smallmind_us=t_sm,
                         numpy_us=t_np, speedup=t_np / t_sm, max_abs_err=None))
    return rows


def bench_pool_and_cache(quick: bool):
    number = 20000 if quick else 200000
    pool = BufferPool()
    shape = (128, 576)
    t_pool = best_us(lambda: pool.release(pool.acquire(shape)), number, 5)
    t_np = best_us(lambda: np.empty(shape, np.float32), number, 5)
    cache = KVCache(1, 1, 1 << 21, 1)  # room for every timed step, tiny rows

    def step():
        cache.reserve(1)
        cache.commit(1)
    t_kv = best_us(step, min(number, 150000), 5)
    return [
        dict(kernel="pool", case=f"acquire+release {shape}", smallmind_us=t_pool,
             numpy_us=t_np, speedup=t_np / t_pool, max_abs_err=None),
        dict(kernel="kv_cache", case="reserve(1)+commit(1)", smallmind_us=t_kv,
             numpy_us=None, speedup=None, max_abs_err=None),
    ]


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", default="", help="comma-separated thread counts for wall-time columns")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "attention.json"))
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t]
    rows = bench_attention(args.quick, threads) + bench_rope(args.quick) + bench_pool_and_cache(args.quick)
    wall = "".join(f" wall µs {nt}t |" for nt in threads)
    print(f"| kernel | case | smallmind µs | numpy µs | speedup | max abs err |{wall}")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(threads))
    for r in rows:
        walls = "".join(f" {fmt(r.get(f'wall_us_{nt}t'), '.2f')} |" for nt in threads)
        print(f"| {r['kernel']} | {r['case']} | {r['smallmind_us']:.2f} | "
              f"{fmt(r['numpy_us'], '.2f')} | {fmt(r['speedup'], '.1f')} | "
              f"{fmt(r['max_abs_err'], '.1e')} |{walls}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(),
                                    rows=rows), indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
