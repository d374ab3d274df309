"""The head's peak (``Forward.peak``): the first index of the largest logit, found unit by
unit while the head's product runs, and the sampler told it (``Sampler._sample_at``).

Both are shortcuts with exact answers: the logits must be bit for bit those of one whole
product, the peak exactly ``np.argmax`` (ties to the lowest id), and every choice the
sampler makes with the peak exactly the one it makes without.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smallmind.errors import SamplingError
from smallmind.formats.quantize import q8_0_tensor
from smallmind.models.config import ModelConfig
from smallmind.models.init import random_tensors
from smallmind.models.llama import Llama
from smallmind.sampling import Sampler, SamplingParams
from smallmind.tensors import GGMLType, TensorData

VOCAB = 1000  # units of HEAD_ROWS rows of the head's product, the last one short
TOKENS = [3, 17, 42, 5]


def _model(output: np.ndarray, kind: str, softcap: float = 0.0, n_embd: int = 64) -> Llama:
    config = ModelConfig(arch="llama", vocab_size=VOCAB, n_ctx=16, n_embd=n_embd, n_layer=1, n_head=2,
                         n_hidden=64, bias=False, final_logit_softcap=softcap)
    tensors = random_tensors(config, seed=1, std=0.3)
    tensors["output.weight"] = (q8_0_tensor("output.weight", output) if kind == "q8_0"
                                else TensorData("output.weight", GGMLType.F32, output.shape, output))
    return Llama(config, tensors)


def _run(model: Llama, n_threads: int):
    state = model.new_state(n_threads=n_threads)
    fwd = model.forward(state, TOKENS)
    return fwd, state.workspace.arrays["xb"][0].copy()


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_peak_is_the_first_index_of_the_largest_logit(kind, softcap, n_threads):
    w = np.random.default_rng(4).normal(0, 0.5, size=(VOCAB, 64)).astype(np.float32)
    fwd, xb = _run(_model(w, kind, softcap), n_threads)
    if softcap == 0.0:  # the logits of one whole product, bit for bit
        np.testing.assert_array_equal(fwd.logits, _model(w, kind).output.matmul(xb))
    top = int(np.argmax(fwd.logits))
    assert fwd.peak == top
    # The same row, made the largest, in three units (and past the last whole one): the
    # first of them wins, as np.argmax and the sampler's scan have it.
    tied = w.copy()
    tied[[990, 270, 600]] = 3 * w[top]
    fwd, _ = _run(_model(tied, kind, softcap), n_threads)
    assert fwd.logits[270] == fwd.logits[600] == fwd.logits[990] == fwd.logits.max()
    assert fwd.peak == 270 == int(np.argmax(fwd.logits))


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_peak_over_a_repacked_k_quant_head(name, n_threads):
    """K-quant heads are repacked into 8-row groups too (_matmul_rk.h): cut into units, their
    logits are still one whole product's, bit for bit, and the peak np.argmax."""
    from test_quant import random_blocks

    config = ModelConfig(arch="llama", vocab_size=VOCAB, n_ctx=16, n_embd=256, n_layer=1, n_head=2,
                         n_hidden=64, bias=False)
    tensors = random_tensors(config, seed=1, std=0.3)
    raw = random_blocks(name, VOCAB, np.random.default_rng(6), special=0.0)
    tensors["output.weight"] = TensorData("output.weight", GGMLType[name], (VOCAB, 256), raw.reshape(-1))
    model = Llama(config, tensors)
    assert model.output.repacked
    fwd, xb = _run(model, n_threads)
    np.testing.assert_array_equal(fwd.logits, model.output.matmul(xb))
    assert fwd.peak == int(np.argmax(fwd.logits))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_no_peak_when_a_logit_is_nan(n_threads):
    w = np.random.default_rng(5).normal(0, 0.5, size=(VOCAB, 64)).astype(np.float32)
    w[700, 3] = np.nan
    fwd, _ = _run(_model(w, "f32"), n_threads)
    assert np.isnan(fwd.logits[700]) and fwd.peak == -1
    with pytest.raises(SamplingError, match="NaN"):  # the sampler's own scan finds it
        Sampler(SamplingParams(temperature=0.0), VOCAB)._sample_at(fwd.logits, None, fwd.peak)


def test_greedy_generation_uses_the_peak_and_gives_the_same_tokens():
    from smallmind import Engine
    w = np.random.default_rng(6).normal(0, 0.5, size=(VOCAB, 64)).astype(np.float32)
    model = _model(w, "q8_0")
    engine = Engine(model, None)
    got = engine.generate(TOKENS, max_new_tokens=12, temperature=0.0).tokens
    # by hand, each step's argmax of the full logits
    state, ids, want = model.new_state(), list(TOKENS), []
    for _ in range(12):
        fwd = model.forward(state, ids)
        assert fwd.peak == int(np.argmax(fwd.logits))
        ids = [int(np.argmax(fwd.logits))]
        want += ids
    assert got == want


_logit = st.sampled_from([-math.inf, -3.0, -1.0, 0.0, -0.0, 0.5, 1.0, 2.0])
_bias = st.dictionaries(st.integers(0, 39), st.sampled_from([-math.inf, -2.0, -1.0, 0.0, 1.0, 1.5]),
                        max_size=4)


@given(logits=st.lists(_logit, min_size=40, max_size=40), bias=_bias,
       temperature=st.sampled_from([0.0, 0.0, 0.7, 1.0]), top_k=st.sampled_from([None, 5]),
       seed=st.integers(0, 2**32 - 1))
def test_sampling_told_the_peak_matches_sampling_without_it(logits, bias, temperature, top_k, seed):
    x = np.array(logits, dtype=np.float32)
    if x.max() == -math.inf:
        x[7] = 0.0
    peak = int(np.argmax(x))
    params = SamplingParams(temperature=temperature, top_k=top_k, logit_bias=bias, seed=seed)
    plain, told = Sampler(params, 40), Sampler(params, 40)
    for _ in range(3):
        try:
            want = plain.sample(x)
        except SamplingError:  # every token banned: the same error, told or not
            with pytest.raises(SamplingError):
                told._sample_at(x, None, peak)
            return
        assert told._sample_at(x, None, peak) == want


def test_sample_at_checks_the_peak_range():
    sampler = Sampler(SamplingParams(temperature=0.0), 8)
    x = np.zeros(8, np.float32)
    assert sampler._sample_at(x, None, -1) == 0
    for bad in (-2, 8):
        with pytest.raises(ValueError, match="peak"):
            sampler._sample_at(x, None, bad)


@pytest.mark.parametrize("bias, want", [
    ({}, 2),                          # the peak itself
    ({2: -1.0}, 5),                   # the peak biased down: the next largest
    ({2: -math.inf}, 5),              # banned
    ({0: 1.0}, 0),                    # an earlier token biased up to a tie: the first wins
    ({7: 1.5}, 7),                    # a later one biased above it
    ({7: 1.0}, 2),                    # a later one biased to a tie: the peak stays
    ({5: -math.inf, 2: -math.inf}, 0),
])
def test_greedy_with_bias_told_the_peak(bias, want):
    x = np.array([1.0, -1.0, 2.0, 0.0, -3.0, 1.5, 0.5, 1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, logit_bias=bias), 8)
    assert sampler.sample(x) == want
    assert sampler._sample_at(x, None, 2) == want


@pytest.mark.parametrize("min_p", [None, 0.05])
def test_weights_on_threads_draw_the_same_tokens(min_p):
    """The unfiltered distribution of a large vocabulary is weighed on the pool's threads
    (_set_threads); block sums and their total, hence every draw, are the serial ones."""
    x = np.random.default_rng(9).normal(0, 3, size=262_144).astype(np.float32)
    x[[5, 200_000]] = -math.inf
    params = SamplingParams(temperature=0.8, min_p=min_p, seed=11)
    serial, threaded = Sampler(params, x.size), Sampler(params, x.size)
    threaded._set_threads(2)
    draws = [serial.sample(x) for _ in range(40)]
    assert draws == [threaded.sample(x) for _ in range(40)]
    assert len(set(draws)) > 1
    with pytest.raises(ValueError, match="n_threads"):
        threaded._set_threads(0)
