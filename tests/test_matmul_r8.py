"""Weights of the 32-element block types repacked at load into 8-row interleaved groups
(_matmul_r8.h; the K-quants' layout, _matmul_rk.h, in the reference and panel tests here and
in test_matmul_qk.py): products against the NumPy dequantised reference (tolerances of
test_matmul.py), rows past the last whole group kept plain, results that do not depend on n,
the thread count or the layout's neighbours, and every other use of a Weight (get_row,
dequantize, fused products, sizes) on the repacked storage."""
from __future__ import annotations

import mmap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_matmul import check_product, isa, make_weight, random_activations  # noqa: F401

from smallmind._core import _matmul
from smallmind.errors import CPUFeatureError
from smallmind.tensors import BLOCK_LAYOUT, GGMLType

R8_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(R8_TYPES + ["Q4_K", "Q5_K", "Q6_K"]), rows=st.integers(8, 43),
       blocks=st.sampled_from([1, 2, 3, 8, 9, 18, 48]), n=st.integers(1, 17), seed=st.integers(0, 2 ** 32 - 1))
def test_repacked_matches_reference(isa, name, rows, blocks, n, seed):  # noqa: F811  (the isa fixture)
    """Repacked weights (the K-quants: _matmul_rk.h), rows past the last group plain, against
    the reference; each row as a product of its own, on 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    cols = BLOCK_LAYOUT[GGMLType[name]][0] * blocks
    w, w32, mag = make_weight(name, rows, cols, rng)
    assert w.repacked and w.type == int(GGMLType[name])
    x = random_activations(n, cols, rng)
    y = w.matmul(x)
    check_product(name, w32, mag, x, y)
    np.testing.assert_array_equal(y, w.matmul(x, n_threads=2))
    for i in range(n):  # a row's result never depends on the other rows of the call
        np.testing.assert_array_equal(y[i], w.matmul(x[i]), err_msg=f"row {i} of {n}")
    np.testing.assert_array_equal(w.dequantize(), w32)
    np.testing.assert_array_equal(w.get_row(rows - 1), w32[rows - 1])  # a tail row when rows % 8


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(R8_TYPES + ["Q4_K", "Q5_K", "Q6_K"]), rows=st.integers(8, 80),
       blocks=st.sampled_from([1, 2, 3, 9, 17, 31, 32, 33, 48, 70]), n=st.integers(1, 40),
       seed=st.integers(0, 2 ** 32 - 1))
def test_panels_match_tiles_and_single_rows_bit_for_bit(r8_panel, name, rows, blocks, n, seed):
    """Prompts multiply through unpacked panels (_matmul_r8panel.h: two groups in slices of at
    most 32 blocks; K-quants one group in slices of 8, the running sums carried across them):
    forced on for every n (the odd groups, the n % 4 rows, rows past the last group, several
    slices), each output is bit for bit the 8 x 4 tiles' and the n = 1 kernel's, with a bias and
    accumulating into y too, on 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    cols = BLOCK_LAYOUT[GGMLType[name]][0] * blocks
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(n, cols, rng)
    bias = rng.standard_normal(rows).astype(np.float32)
    base = rng.standard_normal((n, rows)).astype(np.float32)
    alone = np.stack([w.matmul(x[i], bias=bias) for i in range(n)])  # n = 1: the decoding kernel
    results = {}
    for panel in (True, False):
        r8_panel(panel)
        results[panel] = [w.matmul(x, bias=bias, n_threads=t) for t in (1, 2)]
        acc = base.copy()
        w.matmul(x, out=acc, accumulate=True)
        results[panel].append(acc)
    for y_panel, y_tile in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(y_panel, y_tile)
    np.testing.assert_array_equal(results[True][0], alone)
    check_product(name, w32, mag, x, results[True][0], bias=bias)
    check_product(name, w32, mag, x, results[True][2], base=base)


# vpdpbusd forms to check against maddubs: emulated (any CPU) and the CPU's own, if it has one
VNNI_FORMS = [3] + ([_matmul._vnni(detected=True)] if _matmul._vnni(detected=True) else [])


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(R8_TYPES), rows=st.integers(8, 40),
       blocks=st.sampled_from([1, 2, 9, 33]), n=st.integers(2, 40), panel=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_vnni_tiles_match_maddubs_bit_for_bit(vnni, r8_panel, name, rows, blocks, n, panel, seed):
    """Tiles and panels of several activation rows with vpdpbusd (emulated on any CPU, and the
    CPU's own form where it has one) give the maddubs kernels' outputs bit for bit, the integer
    sums being exact either way; and those agree with the reference."""
    rng = np.random.default_rng(seed)
    cols = BLOCK_LAYOUT[GGMLType[name]][0] * blocks
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(n, cols, rng)
    r8_panel(panel)
    vnni(0)
    expected = [w.matmul(x, n_threads=t) for t in (1, 2)]
    for form in VNNI_FORMS:
        vnni(form)
        for t, y in zip((1, 2), expected, strict=True):
            np.testing.assert_array_equal(w.matmul(x, n_threads=t), y, err_msg=f"form {form}, {t} threads")
    check_product(name, w32, mag, x, expected[0])


def test_vnni_forms_are_checked(vnni):
    """_set_vnni refuses an unknown form, and a form this CPU lacks, with a clear error."""
    with pytest.raises(ValueError, match="mode"):
        vnni(7)
    for form in (1, 2):
        if form != _matmul._vnni(detected=True) and not (form == 1 and _matmul._detected_isa() == 2):
            with pytest.raises(CPUFeatureError, match="vpdpbusd"):
                vnni(form)
    assert vnni(3) in (0, 1, 2, 3) and _matmul._vnni() == 3
    assert _matmul.kernel_paths()["vnni"] == "emulated"


@pytest.mark.parametrize("name", R8_TYPES)
def test_panels_over_activation_chunks(r8_panel, name):
    """n = 300 (two activation chunks of at most 256 rows) and rows long enough for 3 panel
    slices, at the default thresholds: the same bits as the tiles and as one row at a time."""
    rng = np.random.default_rng(300)
    w, w32, mag = make_weight(name, 8 * 5 + 3, 32 * 70, rng)
    x = random_activations(300, 32 * 70, rng)
    y = w.matmul(x)
    for i in (0, 7, 255, 256, 299):
        np.testing.assert_array_equal(y[i], w.matmul(x[i]), err_msg=f"row {i}")
    r8_panel(False)
    np.testing.assert_array_equal(y, w.matmul(x))
    check_product(name, w32, mag, x, y)


@pytest.mark.parametrize("name", R8_TYPES)
def test_plain_layout_on_request_and_for_small_weights(name):
    rng = np.random.default_rng(3)
    raw = make_weight(name, 16, 64, rng)[0]
    assert raw.repacked
    block, nbytes = BLOCK_LAYOUT[GGMLType[name]]
    data = rng.integers(0, 256, (16 * 64 // block, nbytes), dtype=np.uint8)
    data[:, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    data = data.reshape(-1)
    plain = _matmul.Weight(int(GGMLType[name]), (16, 64), data, repack=False)
    assert not plain.repacked and plain.data is data
    packed = _matmul.Weight(int(GGMLType[name]), (16, 64), data)
    assert packed.data is not data and packed.nbytes == plain.nbytes == data.nbytes
    assert packed.row_bytes == plain.row_bytes and not packed.data.flags.writeable
    np.testing.assert_array_equal(packed.dequantize(), plain.dequantize())
    assert packed.scratch_bytes(5) == plain.scratch_bytes(5)
    x = random_activations(3, 64, rng)
    np.testing.assert_allclose(packed.matmul(x), plain.matmul(x), rtol=1e-5, atol=1e-3)
    assert not _matmul.Weight(int(GGMLType[name]), (7, 64), data[: 7 * plain.row_bytes]).repacked


@pytest.mark.parametrize("name", R8_TYPES)
@pytest.mark.parametrize("rows", [8 * 40, 8 * 40 + 5])
def test_threads_and_chunks_do_not_change_rows(isa, name, rows):  # noqa: F811
    rng = np.random.default_rng(rows)
    w, w32, mag = make_weight(name, rows, 256, rng)
    for n in (1, 3, 9):
        x = random_activations(n, 256, rng)
        one = w.matmul(x, n_threads=1)
        np.testing.assert_array_equal(one, w.matmul(x, n_threads=2))
        check_product(name, w32, mag, x, one)


@settings(suppress_health_check=FIXTURE_OK)
@given(names=st.lists(st.sampled_from(R8_TYPES), min_size=2, max_size=4), repack=st.lists(st.booleans(), min_size=4,
       max_size=4), n=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2 ** 32 - 1))
def test_fused_products_mixing_layouts(isa, names, repack, n, seed):  # noqa: F811
    """matmul_many over repacked and plain weights: bit for bit the separate products."""
    rng = np.random.default_rng(seed)
    made = [make_weight(name, int(rng.integers(8, 90)), 256, rng, rp) for name, rp in zip(names, repack, strict=False)]
    x = random_activations(n, 256, rng)
    for (w, w32, mag), name, y in zip(made, names, _matmul._matmul_many([m[0] for m in made], x, 2), strict=True):
        np.testing.assert_array_equal(y, w.matmul(x, n_threads=2))
        check_product(name, w32, mag, x, y)


@pytest.mark.parametrize("name", ["Q4_1", "Q8_0"])
def test_fused_chunks_evened_between_threads(name):
    """Q, K and V shaped as SmolLM2's (576, 192, 192 rows): 15 chunks of 8 row groups are cut
    into 30 of 4 so that 2 threads share them evenly; rows stay bit for bit the same."""
    rng = np.random.default_rng(576)
    made = [make_weight(name, rows, 96, rng) for rows in (576, 192, 192)]
    for n in (1, 3, 9):
        x = random_activations(n, 96, rng)
        for (w, w32, mag), y in zip(made, _matmul._matmul_many([m[0] for m in made], x, 2), strict=True):
            np.testing.assert_array_equal(y, w.matmul(x, n_threads=1))
            check_product(name, w32, mag, x, y)


def mapping_rss_kb(address: int) -> int:
    """Resident kB of this process's mapping starting at `address` (/proc/self/smaps)."""
    with open("/proc/self/smaps") as fh:
        lines = fh.read().splitlines()
    for i, line in enumerate(lines):
        if line.split("-")[0] == f"{address:x}":
            return next(int(v.split()[1]) for v in lines[i + 1:] if v.startswith("Rss:"))
    raise AssertionError(f"no mapping at {address:#x}")


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="Linux /proc/self/smaps")
def test_file_map_pages_are_released(tmp_path):
    """A weight read from a read-only file map is repacked and the map's pages dropped from
    the resident set (they were read once); the repacked copy still gives the same rows."""
    rng = np.random.default_rng(0)
    rows, cols = 512, 2048
    w_plain, w32, _ = make_weight("Q4_1", rows, cols, rng, repack=False)
    path = tmp_path / "w.bin"
    path.write_bytes(np.asarray(w_plain.data).tobytes())
    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(mapping, np.uint8)
    assert int(data.sum()) > 0 and mapping_rss_kb(data.ctypes.data) * 1024 >= data.nbytes  # all mapped in
    w = _matmul.Weight(int(GGMLType.Q4_1), (rows, cols), data)
    assert w.repacked and mapping_rss_kb(data.ctypes.data) == 0
    np.testing.assert_array_equal(w.dequantize(), w32)
    np.testing.assert_array_equal(data, np.asarray(w_plain.data).reshape(-1))  # faulted back in intact


def test_repack_in_pieces():
    """Weights over 4 MB are repacked piece by piece (whole 8-row groups, the tail rows with
    the last piece): every row comes back, and products match the plain layout's."""
    rng = np.random.default_rng(5)
    rows, cols = 1003, 8192  # 4.6 MB of Q4_0: pieces of 904 rows, then 99 (96 + a tail of 3)
    plain, w32, mag = make_weight("Q4_0", rows, cols, rng, repack=False)
    w = _matmul.Weight(int(GGMLType.Q4_0), (rows, cols), np.asarray(plain.data))
    assert w.repacked
    for r in (0, 903, 904, 999, 1000, 1002):
        np.testing.assert_array_equal(w.get_row(r), w32[r])
    x = random_activations(2, cols, rng)
    check_product("Q4_0", w32, mag, x, w.matmul(x, n_threads=2))
