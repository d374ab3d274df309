"""Fused causal attention kernel vs a float64 NumPy reference.

Tolerance: 2e-5 absolute + 2e-4 relative on outputs of order 1 (float32 dot
products over up to 256 dims, a polynomial exp accurate to a few ulp, and the
P.V sum over up to a few hundred positions).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401  (checks the CPU before the kernels load)
from smallmind._core._attention import attention
from smallmind.errors import ShapeError

ATOL, RTOL = 2e-5, 2e-4


def reference(q, k, v, pos0, n_head, n_kv_head, scale=None, window=0):
    """softmax(q.k^T * scale + causal/window mask) v, in float64, one head at a time."""
    n_q = q.shape[0]
    hd = k.shape[2]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    group = n_head // n_kv_head
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    out = np.zeros((n_q, n_head * hd))
    n_keys = pos0 + n_q
    pos = pos0 + np.arange(n_q)[:, None]
    slot = np.arange(n_keys)[None, :]
    allowed = slot <= pos
    if window > 0:
        allowed &= slot > pos - window
    for h in range(n_head):
        qh = q64[:, h * hd:(h + 1) * hd]
        kh, vh = k64[h // group, :n_keys], v64[h // group, :n_keys]
        s = qh @ kh.T * scale
        s = np.where(allowed, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h * hd:(h + 1) * hd] = p @ vh
    return out


def make(rng, n_q, pos0, n_head, n_kv_head, hd, capacity=None, spread=1.0):
    capacity = pos0 + n_q if capacity is None else capacity
    q = (rng.standard_normal((n_q, n_head * hd)) * spread).astype(np.float32)
    k = (rng.standard_normal((n_kv_head, capacity, hd)) * spread).astype(np.float32)
    v = rng.standard_normal((n_kv_head, capacity, hd)).astype(np.float32)
    return q, k, v


@given(n_q=st.integers(1, 19), pos0=st.integers(0, 70), n_kv_head=st.integers(1, 3),
       ratio=st.sampled_from([1, 2, 4]), hd=st.sampled_from([1, 3, 7, 8, 13, 16, 24, 32, 37,
                                                             64, 72, 100, 128, 256]),
       window=st.sampled_from([0, 0, 1, 3, 16, 50]), n_threads=st.sampled_from([1, 1, 2]),
       extra=st.integers(0, 9), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(n_q, pos0, n_kv_head, ratio, hd, window, n_threads, extra, seed):
    rng = np.random.default_rng(seed)
    n_head = n_kv_head * ratio
    q, k, v = make(rng, n_q, pos0, n_head, n_kv_head, hd, capacity=pos0 + n_q + extra)
    out = attention(q, k, v, pos0, n_head, n_kv_head, window=window, n_threads=n_threads)
    want = reference(q, k, v, pos0, n_head, n_kv_head, window=window)
    assert out.shape == (n_q, n_head * hd) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("hd", [8, 32, 64, 256])
@pytest.mark.parametrize("n_keys", [1, 7, 8, 9, 64, 513])
def test_decode_real_head_dims(hd, n_keys):
    rng = np.random.default_rng(hd * 1000 + n_keys)
    q, k, v = make(rng, 1, n_keys - 1, 4, 2, hd)
    out = attention(q, k, v, n_keys - 1, 4, 2)
    np.testing.assert_allclose(out, reference(q, k, v, n_keys - 1, 4, 2), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n_threads", [1, 3])
def test_many_heads_per_kv_head_and_growing_scores(n_threads):
    # 20 query heads on one KV head (more than one group pass of 16), 300 positions
    # (several key blocks), and keys whose scores grow along the sequence so that the
    # running maximum increases from block to block (the online-softmax rescaling).
    rng = np.random.default_rng(9)
    n_head, hd, n_keys = 20, 64, 300
    q, k, v = make(rng, 2, n_keys - 2, n_head, 1, hd)
    direction = q[0, :hd] / np.linalg.norm(q[0, :hd])
    k[0] += (np.linspace(0, 4, n_keys)[:, None] * direction[None, :]).astype(np.float32)
    out = attention(q, k, v, n_keys - 2, n_head, 1, n_threads=n_threads)
    np.testing.assert_allclose(out, reference(q, k, v, n_keys - 2, n_head, 1),
                               atol=ATOL, rtol=RTOL)


def test_large_scores_are_stable():
    # Scores in the thousands would overflow exp without the max subtraction.
    rng = np.random.default_rng(1)
    q, k, v = make(rng, 5, 40, 2, 1, 16, spread=30.0)
    out = attention(q, k, v, 40, 2, 1, scale=1.0)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, reference(q, k, v, 40, 2, 1, scale=1.0), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("where", ["k", "v", "q"])
def test_nan_propagates(where):
    # A NaN that a row attends to must show in that row's output, never vanish.
    rng = np.random.default_rng(10)
    q, k, v = make(rng, 4, 20, 2, 1, 8)
    if where == "q":
        q[2, 3] = np.nan
    else:
        (k if where == "k" else v)[0, 21, 5] = np.nan
    out = attention(q, k, v, 20, 2, 1)
    if where == "q":
        assert np.all(np.isnan(out[2, :8])) and np.all(np.isfinite(out[[0, 1, 3]]))
    else:
        assert np.all(np.isfinite(out[0]))            # row 0 (position 20) never sees slot 21
        assert np.all(np.isnan(out[1:, :8] if where == "k" else out[1:, 5]))


def test_first_position_returns_its_value():
    # Position 0 sees only itself: the output is exactly v[0] of its KV head.
    rng = np.random.default_rng(2)
    q, k, v = make(rng, 1, 0, 4, 2, 13)
    out = attention(q, k, v, 0, 4, 2)
    expected = np.concatenate([v[h // 2, 0] for h in range(4)])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-7)


def test_window_one_returns_own_value():
    rng = np.random.default_rng(3)
    q, k, v = make(rng, 6, 10, 2, 2, 9)
    out = attention(q, k, v, 10, 2, 2, window=1)
    for i in range(6):
        expected = np.concatenate([v[h, 10 + i] for h in range(2)])
        np.testing.assert_allclose(out[i], expected, rtol=1e-6, atol=1e-7)


def test_custom_scale_and_strided_rows_and_out_param():
    rng = np.random.default_rng(4)
    n_head, n_kv, hd = 4, 1, 16
    qkv = rng.standard_normal((7, n_head * hd + 2 * n_kv * hd)).astype(np.float32)
    q = qkv[:, :n_head * hd]  # rows 96 floats apart, as in a fused QKV buffer
    _, k, v = make(rng, 7, 3, n_head, n_kv, hd, capacity=12)
    out_buf = np.full((7, 80), np.nan, dtype=np.float32)
    out = out_buf[:, :n_head * hd]
    res = attention(q, k, v, 3, n_head, n_kv, scale=0.3, out=out)
    assert res is out
    np.testing.assert_allclose(out, reference(q, k, v, 3, n_head, n_kv, scale=0.3),
                               atol=ATOL, rtol=RTOL)
    assert np.all(np.isnan(out_buf[:, n_head * hd:]))  # columns outside out untouched


def test_out_may_not_be_q():
    # A head's query is needed again for every key block after its output was first
    # written, so even exact aliasing is refused.
    rng = np.random.default_rng(5)
    q, k, v = make(rng, 9, 4, 4, 2, 32)
    with pytest.raises(ShapeError, match="overlaps q"):
        attention(q, k, v, 4, 4, 2, out=q)


def test_threads_match_serial():
    rng = np.random.default_rng(6)
    q, k, v = make(rng, 33, 100, 8, 2, 64)
    one = attention(q, k, v, 100, 8, 2, n_threads=1)
    many = attention(q, k, v, 100, 8, 2, n_threads=4)
    np.testing.assert_array_equal(one, many)  # same arithmetic per (row, head)


@pytest.mark.parametrize("n_head, n_kv_head, hd", [(9, 3, 64), (4, 1, 256), (8, 8, 32)])
def test_decode_threads_match_serial(n_head, n_kv_head, hd):
    """One query row over a long cache: threads split a KV head's group of query heads
    into smaller sets (to balance few KV heads over the lanes); each head's result is
    still the serial one, bit for bit."""
    rng = np.random.default_rng(8)
    q, k, v = make(rng, 1, 400, n_head, n_kv_head, hd)
    one = attention(q, k, v, 400, n_head, n_kv_head, n_threads=1)
    for n_threads in (2, 3, 5):
        np.testing.assert_array_equal(one, attention(q, k, v, 400, n_head, n_kv_head, n_threads=n_threads))


# Prompt shapes of the real models (SmolLM2: 9 heads on 3 KV heads of 64; Gemma 3: 4 on 1
# of 256, sliding window 512) and plain multi-head attention, over several key blocks and
# tiles, with and without a cached prefix and a window.
@pytest.mark.parametrize("n_head, n_kv_head, hd", [(4, 4, 64), (9, 3, 64), (4, 1, 256), (6, 3, 72)])
@pytest.mark.parametrize("n_q, pos0, window", [(1, 0, 0), (300, 0, 0), (300, 0, 64), (45, 230, 0),
                                               (97, 180, 100), (2, 299, 0)])
def test_prompt_shapes_match_reference(n_head, n_kv_head, hd, n_q, pos0, window):
    rng = np.random.default_rng(n_q * 7 + pos0 + hd)
    q, k, v = make(rng, n_q, pos0, n_head, n_kv_head, hd, capacity=pos0 + n_q + 5)
    for n_threads in (1, 2):
        out = attention(q, k, v, pos0, n_head, n_kv_head, window=window, n_threads=n_threads)
        np.testing.assert_allclose(out, reference(q, k, v, pos0, n_head, n_kv_head, window=window),
                                   atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n_head, n_kv_head, hd", [(2, 2, 8), (8, 4, 8), (4, 4, 32), (9, 3, 64),
                                                   (8, 2, 72), (4, 1, 256), (20, 1, 16), (40, 1, 64)])
@pytest.mark.parametrize("window", [0, 5, 40])
def test_a_row_is_the_same_bits_in_any_chunk(n_head, n_kv_head, hd, window):
    """Serving relies on this: a prompt read in chunks (after a reused prefix, between other
    sequences' decode steps) or one token at a time gives each row exactly the bits of one
    pass over the whole prompt, on any number of threads."""
    rng = np.random.default_rng(n_head * 100 + hd + window)
    n = 130
    q, k, v = make(rng, n, 0, n_head, n_kv_head, hd)
    whole = attention(q, k, v, 0, n_head, n_kv_head, window=window)
    for cuts in ([0, 1, 2, 3, 17, 64, 65, 129, 130], [0, 40, 130], list(range(n + 1))):
        for n_threads in (1, 2):
            parts = [attention(q[a:b], k, v, a, n_head, n_kv_head, window=window, n_threads=n_threads)
                     for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=f"{cuts[:4]}, {n_threads}")


def test_cache_slots_beyond_the_query_are_ignored():
    rng = np.random.default_rng(7)
    q, k, v = make(rng, 3, 5, 2, 1, 8, capacity=20)
    a = attention(q, k, v, 5, 2, 1)
    k[:, 8:] = np.nan
    v[:, 8:] = np.nan
    b = attention(q, k, v, 5, 2, 1)
    np.testing.assert_array_equal(a, b)


def test_zero_queries():
    rng = np.random.default_rng(8)
    q, k, v = make(rng, 0, 2, 2, 1, 8, capacity=4)
    assert attention(q, k, v, 2, 2, 1).shape == (0, 16)


@pytest.mark.parametrize("change, match", [
    (dict(pos0=-1), "pos0"),
    (dict(pos0=6), "capacity"),
    (dict(n_head=3), "multiple"),
    (dict(n_kv_head=3, n_head=6), "n_kv_head"),
    (dict(q=np.zeros((2, 31), np.float32)), "q"),
    (dict(q=np.zeros((2, 32), np.float64)), "q: expected float32"),
    (dict(k_cache=np.zeros((2, 8, 8), np.float32)), "v_cache"),
    (dict(k_cache=np.zeros((2, 8), np.float32)), "k_cache"),
    (dict(v_cache=np.zeros((2, 8, 8), np.float32)[:, :, ::2]), "v_cache"),
    (dict(out=np.zeros((3, 32), np.float32)), "out"),
    (dict(out=np.zeros((2, 32), np.float32)[::-1]), "out"),
    (dict(k_cache=[[[0.0]]]), "k_cache"),
])
def test_bad_arguments(change, match):
    args = dict(q=np.zeros((2, 32), np.float32), k_cache=np.zeros((2, 7, 8), np.float32),
                v_cache=np.zeros((2, 7, 8), np.float32), pos0=5, n_head=4, n_kv_head=2)
    args.update(change)
    with pytest.raises(ShapeError, match=match):
        attention(**args)


def test_out_overlapping_q_is_refused():
    q = np.zeros((3, 33), np.float32)
    k = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ShapeError, match="overlaps"):
        attention(q[:, :8], k, k.copy(), 0, 1, 1, out=q[:, 1:9])
