"""Row steps (norms, activations, Gemma 3's QK-norm and post-norms) of a call of many rows are
shared out over the thread pool (``_layer.over_rows``); every row is computed alone, so the
logits must be the same bits as on one thread, for every architecture."""
from __future__ import annotations

import numpy as np
import pytest

from smallmind import Engine, ModelConfig
from smallmind._core import _matmul
from smallmind.models import _layer

# n_hidden not a multiple of 8: pieces of rows end inside a vector, where the activations
# take their masked tails
CONFIGS = {
    "gpt2": dict(arch="gpt2", vocab_size=97, n_ctx=96, n_embd=40, n_layer=2, n_head=4, n_hidden=100,
                 norm_eps=1e-5, bias=True, tie_embeddings=False),
    "llama": dict(arch="llama", vocab_size=97, n_ctx=96, n_embd=48, n_layer=2, n_head=4, n_kv_head=2,
                  n_hidden=84, bias=False, tie_embeddings=True, norm_eps=1e-5, rope_theta=10000.0),
    "gemma3": dict(arch="gemma3", vocab_size=64, n_ctx=96, n_embd=32, n_layer=3, n_head=2, n_kv_head=1,
                   head_dim=16, n_hidden=44, bias=False, rope_neox=True, rope_theta=1e6,
                   rope_theta_local=1e4, sliding_window=6, sliding_window_pattern=2,
                   embed_scale=32 ** 0.5, norm_eps=1e-6),
}


@pytest.fixture
def split_every_call():
    old = _layer._set_rows_split_min(1)
    yield
    _layer._set_rows_split_min(old)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_rows_shared_over_threads_give_the_same_logits(arch, split_every_call):
    config = ModelConfig(**CONFIGS[arch])
    engine = Engine.from_config(config, seed=3)
    tokens = np.random.default_rng(4).integers(0, config.vocab_size, size=80).tolist()
    one = engine.logits(tokens, n_threads=1)
    jobs = _matmul._pool_counters()["jobs"]
    two = engine.logits(tokens, n_threads=2)
    split_jobs = _matmul._pool_counters()["jobs"] - jobs
    np.testing.assert_array_equal(one, two)
    # the row steps did go to the pool: more jobs than with the default threshold, under which
    # this tiny model's calls stay on one thread
    _layer._set_rows_split_min(32768)
    jobs = _matmul._pool_counters()["jobs"]
    np.testing.assert_array_equal(one, engine.logits(tokens, n_threads=2))
    assert split_jobs > _matmul._pool_counters()["jobs"] - jobs


def _batch_logits(model, prompts: list[list[int]], n_threads: int) -> np.ndarray:
    states = [model.new_state(capacity=64, n_threads=n_threads) for _ in prompts]
    batch = model.new_batch(max_seqs=len(prompts), capacity=64, max_tokens=64, n_threads=n_threads)
    try:
        return model.forward_batch(batch, list(zip(states, prompts, strict=True))).logits.copy()
    finally:
        batch.close()
        for s in states:
            s.close()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_batch_rows_shared_over_threads_give_the_same_logits(arch, split_every_call):
    """A batch's segments sit at different positions: shared out over the threads, their rows
    still turn by their own angles and give the bits of the batch on one thread."""
    config = ModelConfig(**CONFIGS[arch])
    model = Engine.from_config(config, seed=3).model
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, config.vocab_size, size=k).tolist() for k in (9, 1, 30, 5)]
    np.testing.assert_array_equal(_batch_logits(model, prompts, 1), _batch_logits(model, prompts, 2))


def test_rows_split_min_is_validated():
    with pytest.raises(ValueError, match="floats"):
        _layer._set_rows_split_min(0)
