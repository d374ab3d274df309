"""Rotary position embeddings vs a float64 NumPy rotation, both pair layouts.

Tolerance: 2e-5 absolute on inputs of order 1 at positions up to a few thousand
(angles are computed in float64, so the only error is float32 rounding of x and of
cos/sin). Round trips (+d then -d) must be the identity within 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401
from smallmind._core._attention import rope, rope_inv_freq
from smallmind.errors import ShapeError

ATOL = 2e-5


def reference(x, pos0, n_heads, hd, inv_freq, n_rot, neox, pos_step=1.0):
    out = x.astype(np.float64).reshape(x.shape[0], n_heads, hd).copy()
    half = n_rot // 2
    pos = pos0 + np.arange(x.shape[0], dtype=np.float64) * pos_step
    ang = pos[:, None] * inv_freq[:half].astype(np.float64)[None, :]   # (rows, half)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        i0, i1 = np.arange(half), np.arange(half) + half
    else:
        i0, i1 = 2 * np.arange(half), 2 * np.arange(half) + 1
    a, b = out[:, :, i0].copy(), out[:, :, i1].copy()
    out[:, :, i0] = a * c - b * s
    out[:, :, i1] = a * s + b * c
    return out.reshape(x.shape)


@given(n_rows=st.integers(0, 17), n_heads=st.integers(1, 5),
       hd=st.sampled_from([2, 4, 6, 8, 10, 32, 64, 80, 128, 256, 300]),
       rot_frac=st.sampled_from([1.0, 1.0, 0.5, 0.25]), neox=st.booleans(),
       pos0=st.integers(-50, 3000), pos_step=st.sampled_from([1.0, 1.0, 0.0, 2.0, 0.5]),
       theta=st.sampled_from([10000.0, 500000.0, 1e6]), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(n_rows, n_heads, hd, rot_frac, neox, pos0, pos_step, theta, seed):
    rng = np.random.default_rng(seed)
    n_rot = max(2, int(hd * rot_frac) // 2 * 2)
    inv_freq = rope_inv_freq(n_rot, theta)
    x = rng.standard_normal((n_rows, n_heads * hd)).astype(np.float32)
    want = reference(x, pos0, n_heads, hd, inv_freq, n_rot, neox, pos_step)
    got = rope(x, float(pos0), n_heads, hd, inv_freq, n_rot=n_rot, neox=neox, pos_step=pos_step)
    assert got is x
    np.testing.assert_allclose(x, want, atol=ATOL, rtol=0)
    # the dims past n_rot are left alone (compared exactly)
    tail = x.reshape(n_rows, n_heads, hd)[:, :, n_rot:]
    np.testing.assert_array_equal(tail, want.reshape(n_rows, n_heads, hd)[:, :, n_rot:])


def test_inv_freq():
    f = rope_inv_freq(64, 10000.0, scale=2.0)
    j = np.arange(32)
    np.testing.assert_allclose(f, 10000.0 ** (-2 * j / 64) / 2.0, rtol=1e-7)
    assert f.dtype == np.float32 and f.shape == (32,)
    with pytest.raises(ShapeError):
        rope_inv_freq(7, 10000.0)
    with pytest.raises(ShapeError):
        rope_inv_freq(8, -1.0)


@pytest.mark.parametrize("neox", [False, True])
def test_layouts_pair_the_right_dims(neox):
    # One head of 4 dims, inv_freq = [1, 0]: only the first pair turns, by pos radians.
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    inv = np.array([1.0, 0.0], dtype=np.float32)
    rope(x, np.pi / 2, 1, 4, inv, neox=neox)
    if neox:   # pair (0, 2) turns 90 degrees: (1, 3) -> (-3, 1); (1, 3) pair stays
        np.testing.assert_allclose(x[0], [-3.0, 2.0, 1.0, 4.0], atol=1e-6)
    else:      # pair (0, 1) turns: (1, 2) -> (-2, 1)
        np.testing.assert_allclose(x[0], [-2.0, 1.0, 3.0, 4.0], atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_pos_step_zero_is_the_same_angle_for_every_row(neox):
    rng = np.random.default_rng(0)
    inv = rope_inv_freq(16, 10000.0)
    row = rng.standard_normal((1, 3 * 16)).astype(np.float32)
    x = np.repeat(row, 9, axis=0)
    rope(x, 37.0, 3, 16, inv, neox=neox, pos_step=0.0)
    single = row.copy()
    rope(single, 37.0, 3, 16, inv, neox=neox)
    for i in range(9):
        np.testing.assert_array_equal(x[i], single[0])


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("hd", [8, 64, 256])
def test_rotate_back_is_identity(neox, hd):
    rng = np.random.default_rng(hd)
    inv = rope_inv_freq(hd, 10000.0)
    x0 = rng.standard_normal((20, 2 * hd)).astype(np.float32)
    x = x0.copy()
    rope(x, 5.0, 2, hd, inv, neox=neox)                   # positions 5..24
    rope(x, 321.0, 2, hd, inv, neox=neox, pos_step=0.0)   # shift every row by +321
    rope(x, -321.0, 2, hd, inv, neox=neox, pos_step=0.0)  # ... and back
    rope(x, -5.0, 2, hd, inv, neox=neox, pos_step=-1.0)   # undo positions 5..24
    np.testing.assert_allclose(x, x0, atol=1e-5)


def test_shift_equals_direct_rotation():
    # Rotating keys at position p by -d equals rotating them at p - d (what a KV shift does).
    rng = np.random.default_rng(3)
    inv = rope_inv_freq(32, 10000.0)
    x0 = rng.standard_normal((6, 32)).astype(np.float32)
    shifted = x0.copy()
    rope(shifted, 100.0, 1, 32, inv)
    rope(shifted, -40.0, 1, 32, inv, pos_step=0.0)
    direct = x0.copy()
    rope(direct, 60.0, 1, 32, inv)
    np.testing.assert_allclose(shifted, direct, atol=1e-5)


def test_strided_rows():
    rng = np.random.default_rng(4)
    inv = rope_inv_freq(8, 10000.0)
    buf = rng.standard_normal((5, 40)).astype(np.float32)
    before = buf.copy()
    view = buf[:, 8:24]       # two heads of 8, rows 40 floats apart
    rope(view, 3.0, 2, 8, inv)
    np.testing.assert_allclose(view, reference(before[:, 8:24], 3.0, 2, 8, inv, 8, False),
                               atol=ATOL)
    np.testing.assert_array_equal(buf[:, :8], before[:, :8])
    np.testing.assert_array_equal(buf[:, 24:], before[:, 24:])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_rot=7), "n_rot"),
    (dict(n_rot=18), "n_rot"),
    (dict(x=np.zeros((2, 30), np.float32)), "x"),
    (dict(x=np.zeros((2, 32), np.float64)), "x"),
    (dict(x=np.zeros((2, 64), np.float32)[:, ::2]), "x"),
    (dict(inv_freq=np.zeros(3, np.float32)), "inv_freq"),
    (dict(inv_freq=np.zeros(8, np.float64)), "inv_freq"),
    (dict(pos0=float("nan")), "finite"),
    (dict(head_dim=0), "positive"),
])
def test_bad_arguments(kwargs, match):
    args = dict(x=np.zeros((2, 32), np.float32), pos0=0.0, n_heads=2, head_dim=16,
                inv_freq=np.zeros(8, np.float32))
    args.update(kwargs)
    with pytest.raises(ShapeError, match=match):
        rope(**args)


def test_read_only_is_refused():
    x = np.zeros((2, 16), np.float32)
    x.flags.writeable = False
    with pytest.raises(ShapeError, match="read-only"):
        rope(x, 0.0, 1, 16, np.zeros(8, np.float32))


# -- the layers' angle tables ---------------------------------------------------------------

def _tiny_gemma3():
    """A random Gemma 3 whose local and global layers alternate (two frequency tables)."""
    from smallmind.models.config import ModelConfig
    from smallmind.models.init import random_tensors
    from smallmind.models.llama import Llama
    config = ModelConfig(arch="gemma3", vocab_size=64, n_ctx=40, n_embd=32, n_layer=5, n_head=2,
                         n_kv_head=1, head_dim=16, n_hidden=48, bias=False, rope_neox=True,
                         rope_theta=1e6, rope_scale=8.0, rope_theta_local=1e4, sliding_window=6,
                         sliding_window_pattern=2, embed_scale=32 ** 0.5, norm_eps=1e-6)
    tensors = random_tensors(config, seed=5, std=0.2)
    return Llama(config, tensors), tensors


def test_one_table_per_frequency_table_matches_tables_rebuilt_at_every_switch():
    """A workspace keeps a rotary angle table per frequency table (local and global layers);
    with one table it recomputes the angles at every switch, as before. Both must give the
    same logits bit for bit: prompt chunks (several rows), decode steps, and a batch."""
    from smallmind.reference import gemma3_logits
    model, tensors = _tiny_gemma3()
    assert len({layer.inv_freq_array.tobytes() for layer in model.layers}) == 2
    tokens = np.random.default_rng(2).integers(0, 64, size=24).tolist()

    def run(slots: int) -> np.ndarray:
        state = model.new_state(n_threads=1, max_tokens=4)  # a 7-token prompt runs in 2 calls
        state.workspace.rope_slots = slots
        out = [model.forward(state, tokens[:7]).logits.copy()]
        out += [model.forward(state, [t]).logits.copy() for t in tokens[7:]]
        state.close()
        return np.stack(out)

    def run_batch(slots: int) -> np.ndarray:
        states = [model.new_state(n_threads=1) for _ in range(2)]
        batch = model.new_batch(max_seqs=2, capacity=40)
        batch.workspace.rope_slots = slots
        model.forward(states[0], tokens[:3])
        out = []
        for i in range(8):  # the two sequences at different positions, each step
            fwd = model.forward_batch(batch, [(states[0], [tokens[3 + i]]), (states[1], tokens[i:i + 2])])
            out.append(fwd.logits.copy())
        return np.stack(out)

    cached = run(2)
    np.testing.assert_array_equal(cached, run(1))
    np.testing.assert_array_equal(run_batch(2), run_batch(1))
    # and both are right: the float64 reference, which computes every angle afresh
    ref = gemma3_logits(model.config, tensors, tokens)[6:]
    np.testing.assert_allclose(cached, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_rope_slots_is_validated():
    state = _tiny_gemma3()[0].new_state()
    assert state.workspace.rope_slots == 2
    for bad in (0, 3):
        with pytest.raises(ValueError, match="rope_slots"):
            state.workspace.rope_slots = bad
    assert state.workspace.rope_slots == 2


def test_more_frequency_tables_than_tables_share_them():
    """Three frequency tables over two angle tables: the least recently used is recomputed,
    and every layer still turns by its own frequencies (as with one table, rebuilt at each
    switch)."""
    from smallmind.models.gemma3 import Gemma3
    from smallmind.models.llama import rope_inv_freq

    class ThreeThetas(Gemma3):
        def _layer_options(self, i: int) -> dict:
            # A B A C A: a table found again after another was made, one evicted by a third
            return super()._layer_options(i) | {"inv_freq": rope_inv_freq(16, (1e2, 1e4, 1e2, 1e6, 1e2)[i])}

    model, tensors = _tiny_gemma3()
    model = ThreeThetas(model.config, tensors)
    assert len({layer.inv_freq_array.tobytes() for layer in model.layers}) == 3
    tokens = np.random.default_rng(3).integers(0, 64, size=12).tolist()

    def run(slots: int) -> np.ndarray:
        state = model.new_state(n_threads=1, max_tokens=4)
        state.workspace.rope_slots = slots
        out = [model.forward(state, tokens[:5]).logits.copy()]
        out += [model.forward(state, [t]).logits.copy() for t in tokens[5:]]
        return np.stack(out)

    np.testing.assert_array_equal(run(2), run(1))
