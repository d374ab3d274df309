"""The token-mask kernel (smallmind/_core/_mask.pyx) against a NumPy reference, and the
sampler never drawing a token a mask bans."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from smallmind._core._mask import apply_token_mask, count_allowed
from smallmind.sampling import Sampler, SamplingParams


def reference_mask(logits: np.ndarray, words: np.ndarray) -> np.ndarray:
    """NumPy: bit t & 31 of word t >> 5 (little-endian bit order) allows token t."""
    bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")[:logits.shape[0]]
    return np.where(bits.astype(bool), logits, np.float32(-np.inf)).astype(np.float32)


@st.composite
def masks(draw) -> tuple[np.ndarray, np.ndarray]:
    """A logits row and a mask of at least enough words; words often all-0 or all-1."""
    n = draw(st.integers(1, 3000))
    logits = draw(arrays(np.float32, n, elements=st.floats(-1e4, 1e4, width=32)))
    word = st.sampled_from([0, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)
    words = draw(arrays(np.uint32, (n + 31) // 32 + draw(st.integers(0, 2)), elements=word))
    return logits, words


@given(masks())
def test_apply_token_mask_matches_numpy(case):
    logits, words = case
    expected = reference_mask(logits, words)
    out = logits.copy()
    apply_token_mask(out, words)
    np.testing.assert_array_equal(out, expected)
    assert count_allowed(words, logits.shape[0]) == int(np.isfinite(expected).sum())


@given(masks(), st.floats(0.1, 2.0), st.integers(0, 50), st.integers(0, 2**31))
def test_sampler_never_draws_a_masked_token(case, temperature, top_k, seed):
    logits, words = case
    if count_allowed(words, logits.shape[0]) == 0:
        return
    apply_token_mask(logits, words)
    sampler = Sampler(SamplingParams(temperature=temperature, top_k=top_k, seed=seed), logits.shape[0])
    for _ in range(5):
        token = sampler.sample(logits, [])
        assert (words[token >> 5] >> (token & 31)) & 1


def test_apply_token_mask_edits_in_place_and_checks_sizes():
    logits = np.zeros(40, np.float32)
    words = np.array([0b1010, 0xFFFFFFFF], np.uint32)
    apply_token_mask(logits, words)
    assert np.isfinite(logits).nonzero()[0].tolist() == [1, 3] + list(range(32, 40))
    with pytest.raises(ValueError, match="mask has 1 words"):
        apply_token_mask(np.zeros(40, np.float32), words[:1])
    with pytest.raises(ValueError):
        apply_token_mask(np.zeros(40, np.float64), words)  # wrong dtype: no silent copy
    with pytest.raises(ValueError):
        count_allowed(words, -1)
