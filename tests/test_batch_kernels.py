"""What batching relies on in the matrix products: a row's result does not depend on the
other rows of the call. Quantised weights: any n, any tile shape (2x4, 4x2, 4x1 ...; the
K-quants' pairs of rows against 1-4 activation rows, 2x4 2x3 2x2 2x1, from n = 3) gives
each row bit for bit what a one-row call gives. Float weights: the row kernel (n below the
packed threshold) likewise; which kernel runs is what matmul_split picks per segment."""
from __future__ import annotations

import numpy as np
import pytest
from test_matmul import FLOAT_TYPES, QUANT_TYPES, isa, make_weight, random_activations  # noqa: F401

from smallmind.models.base import PACKED_MIN_ROWS


@pytest.mark.parametrize("repack", [True, False], ids=["repacked", "plain"])
@pytest.mark.parametrize("name", QUANT_TYPES + FLOAT_TYPES)
def test_each_row_equals_a_one_row_product(isa, name, repack):  # noqa: F811  (the isa fixture)
    rng = np.random.default_rng(7)
    # 37 rows: 4-row groups (8-row ones when repacked) and a ragged end
    w, _, _ = make_weight(name, 37, 512, rng, repack)
    sizes = [2, 3, 5, 6, 7, 9, 10, 13, 16] if name in QUANT_TYPES else list(range(2, PACKED_MIN_ROWS))
    for n in sizes:
        x = random_activations(n, 512, rng)
        y = w.matmul(x)
        for i in range(n):
            np.testing.assert_array_equal(y[i], w.matmul(x[i]), err_msg=f"{name}, row {i} of {n}")
