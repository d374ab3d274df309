"""smallmind's own Q8_0 quantiser (used to write the default model) against ggml's."""
from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smallmind._core._matmul import Weight
from smallmind.formats.quantize import quantize_q8_0
from smallmind.tensors import GGMLType


@given(rows=st.integers(1, 9), blocks=st.integers(1, 6), scale=st.floats(1e-6, 1e4),
       seed=st.integers(0, 2**31 - 1))
def test_q8_0_bytes_equal_ggml_reference(rows, blocks, scale, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, blocks * 32)) * scale).astype(np.float32)
    a[0, :32] = 0.0                      # an all-zero block
    a[-1, -1] = np.float32(scale * 0.5)  # exact halves exercise the rounding rule
    ours = quantize_q8_0(a)
    ref = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0).reshape(ours.shape)
    np.testing.assert_array_equal(ours, ref)
    back = Weight(int(GGMLType.Q8_0), a.shape, ours).dequantize()
    if scale >= 1e-3:  # scales stay in float16's normal range: error <= half a step + f16 rounding
        assert np.all(np.abs(back - a) <= np.abs(a).max() / 127 * 0.6 + 1e-12)


def test_q8_0_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.zeros((2, 33), np.float32))
    with pytest.raises(ValueError):
        quantize_q8_0(np.zeros(64, np.float32))
