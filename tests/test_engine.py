"""Engine, models and sessions against the plain-NumPy reference forward passes."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smallmind import Engine, ModelConfig
from smallmind._text import _TextAssembler
from smallmind.errors import ContextOverflowError, SmallMindError, TokenizerError
from smallmind.models.init import random_tensors
from smallmind.reference import gpt2_logits, llama_logits
from smallmind.tokenizers import ByteTokenizer

SEED = ModelConfig.seed_small()


def llama_config(**kw) -> ModelConfig:
    base = dict(arch="llama", vocab_size=97, n_ctx=48, n_embd=48, n_layer=2, n_head=4, n_kv_head=2,
                n_hidden=80, bias=False, tie_embeddings=True, norm_eps=1e-5, rope_theta=10000.0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def seed_engine():
    return Engine.from_config(SEED, seed=42)


def test_seed_config_is_the_seed_workload():
    c = ModelConfig.seed_small()
    assert (c.vocab_size, c.n_ctx, c.n_embd, c.n_layer, c.n_head, c.head_dim, c.n_hidden) == \
        (256, 64, 128, 2, 4, 32, 512)
    assert c.n_params() == 470_528
    tensors = random_tensors(c, seed=42)
    assert sum(t.data.size for t in tensors.values()) == 470_528
    assert "output.weight" in tensors and "attn_qkv.bias" in "".join(tensors)


def test_gpt2_logits_match_numpy_reference(seed_engine):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=40).tolist()
    ours = seed_engine.logits(tokens)
    ref = gpt2_logits(SEED, random_tensors(SEED, seed=42), tokens)
    assert ours.dtype == np.float32 and ours.shape == (40, 256)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_llama_logits_match_numpy_reference(neox, n_kv_head):
    config = llama_config(rope_neox=neox, n_kv_head=n_kv_head)
    tensors = random_tensors(config, seed=3, std=0.1)
    engine = Engine.from_config(config, seed=3)
    engine = Engine(type(engine.model)(config, tensors), None)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=30).tolist()
    ref = llama_logits(config, tensors, tokens)
    np.testing.assert_allclose(engine.logits(tokens), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_same_seed_same_weights_different_seed_different():
    a = Engine.from_config(SEED, seed=1).logits([1, 2, 3])
    b = Engine.from_config(SEED, seed=1).logits([1, 2, 3])
    c = Engine.from_config(SEED, seed=2).logits([1, 2, 3])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("config", [SEED, llama_config()], ids=["gpt2", "llama"])
def test_cached_decoding_equals_full_recomputation(config):
    engine = Engine.from_config(config, seed=5)
    session = engine.session()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    result = session.generate(prompt, max_new_tokens=20, temperature=0.0)
    seq = prompt + result.tokens
    full = engine.logits(seq)
    # Greedy decoding from the cache picked the argmax of the full recomputation at every step.
    assert result.tokens == [int(np.argmax(full[len(prompt) - 1 + i])) for i in range(20)]
    # And the cached last-position logits equal the recomputed ones.
    np.testing.assert_allclose(session._state.workspace.arrays["logits"], full[-2], rtol=1e-4, atol=1e-5)


def test_prefill_in_chunks_equals_one_pass():
    config = llama_config(n_ctx=48)
    engine = Engine.from_config(config, seed=9)
    tokens = list(range(1, 41))
    whole = engine.logits(tokens)
    state = engine.model.new_state(max_tokens=7)
    out = np.empty((40, config.vocab_size), dtype=np.float32)
    engine.model.forward(state, tokens, all_logits=out)
    np.testing.assert_allclose(out, whole, rtol=1e-5, atol=1e-5)
    state.close()


def test_session_continues_from_cache():
    engine = Engine.from_config(SEED, seed=42)
    s = engine.session()
    first = s.generate("To be", max_new_tokens=5, temperature=0.0)
    assert s._state.cache.length == len("To be") + 4  # the last sampled token is not run yet
    second = s.generate(", or not", max_new_tokens=5, temperature=0.0)
    # Same as one fresh run over the whole conversation.
    whole = list(b"To be") + first.tokens + list(b", or not")
    fresh = engine.generate(whole, max_new_tokens=5, temperature=0.0)
    assert second.tokens == fresh.tokens
    assert second.prompt_tokens == list(b", or not")


def test_generate_result_fields(seed_engine):
    r = seed_engine.generate("Hello", max_new_tokens=12, temperature=0.8, seed=7)
    assert r.prompt_tokens == list(b"Hello")
    assert len(r.tokens) == 12 and r.finish_reason == "length"
    assert isinstance(r.text, str)
    t = r.timings
    assert t.prompt_ms > 0 and t.decode_ms > 0 and t.ttft_ms >= t.prompt_ms
    assert t.decode_tokens == 12 and t.prompt_tokens == 5
    assert t.decode_tokens_per_s > 0 and t.prompt_tokens_per_s > 0


def test_seeded_generation_repeats(seed_engine):
    a = seed_engine.generate("abc", max_new_tokens=30, seed=11).tokens
    b = seed_engine.generate("abc", max_new_tokens=30, seed=11).tokens
    c = seed_engine.generate("abc", max_new_tokens=30, seed=12).tokens
    assert a == b and a != c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_joins_to_non_stream_text(seed_engine, seed):
    kw = dict(max_new_tokens=40, temperature=1.0, seed=seed)
    full = seed_engine.generate("xyz", **kw)
    chunks = list(seed_engine.generate("xyz", stream=True, **kw))
    assert "".join(c.text for c in chunks) == full.text
    assert [c.token for c in chunks if c.token is not None] == full.tokens


def test_stream_result_available_after_exhaustion(seed_engine):
    stream = seed_engine.generate("q", max_new_tokens=4, stream=True, seed=0)
    assert stream.result is None
    list(stream)
    assert stream.result is not None and len(stream.result.tokens) == 4


class _ScriptTokenizer(ByteTokenizer):
    pass


@given(text=st.text(min_size=0, max_size=30), stop=st.text(min_size=1, max_size=4))
def test_text_assembler_never_splits_characters_and_honours_stops(text, stop):
    tok = ByteTokenizer()
    asm = _TextAssembler(tok, [stop], strip_leading_space=False)
    pieces = []
    for b in text.encode("utf-8"):
        piece = asm.feed(b)
        assert "\ufffd" not in piece  # a valid UTF-8 stream never yields a broken character
        pieces.append(piece)
        if asm.stopped:
            break
    pieces.append(asm.finish())
    out = "".join(pieces)
    cut = text.find(stop)
    assert out == (text[:cut] if cut >= 0 else text)


def test_stop_string_across_tokens_stream_and_not(seed_engine):
    # Bias the byte model towards spelling "ab" repeatedly, then stop on "ba".
    bias = {ord("a"): 30.0, ord("b"): 29.5}
    kw = dict(max_new_tokens=40, temperature=1.0, seed=3, logit_bias=bias, stop=["ba"])
    r = seed_engine.generate("x", **kw)
    chunks = list(seed_engine.generate("x", stream=True, **kw))
    assert "ba" not in r.text
    assert r.finish_reason == "stop"
    assert "".join(c.text for c in chunks) == r.text


def test_context_overflow_error():
    engine = Engine.from_config(SEED, seed=42)
    with pytest.raises(ContextOverflowError, match="prompt is 65 tokens, context is 64"):
        engine.generate(list(range(65)), max_new_tokens=10, temperature=0.0)
    r = engine.generate(list(range(60)), max_new_tokens=10, temperature=0.0)  # keeps the work
    assert r.finish_reason == "length" and len(r.tokens) == 5
    with pytest.raises(ContextOverflowError):
        engine.logits(list(range(65)))


def test_sliding_window_refused_for_learned_positions():
    engine = Engine.from_config(SEED, seed=42)
    with pytest.raises((SmallMindError, ValueError), match="position"):
        engine.session(overflow="shift", n_keep=4)


def test_sliding_window_for_rotary_model_keeps_generating():
    config = llama_config(n_ctx=32)
    engine = Engine.from_config(config, seed=2)
    s = engine.session(overflow="shift", n_keep=4)
    r = s.generate(list(range(1, 21)), max_new_tokens=40, temperature=0.0)
    assert len(r.tokens) == 40
    assert s._state.cache.length <= 32
    # The kept prefix is still the start of the conversation.
    assert s.tokens[:4] == [1, 2, 3, 4]


def test_shifted_cache_matches_recomputation_of_the_kept_tokens():
    """After a shift, layer 0's cache (which depends only on each token and its position)
    must equal a fresh prefill of the tokens it kept: the moved keys were re-rotated."""
    config = llama_config(n_ctx=24)
    engine = Engine.from_config(config, seed=4)
    s = engine.session(overflow="shift", n_keep=2)
    s.generate(list(range(1, 20)), max_new_tokens=12, temperature=0.0)
    kept = s.tokens[:s._state.cache.length]
    fresh = engine.session()
    fresh.generate(kept, max_new_tokens=0)
    n = len(kept)
    assert s._state.cache.n_discarded > 0
    np.testing.assert_allclose(s._state.cache.k[0, :, :n], fresh._state.cache.k[0, :, :n], atol=1e-5)
    np.testing.assert_allclose(s._state.cache.v[0, :, :n], fresh._state.cache.v[0, :, :n], atol=1e-6)


def test_bad_inputs(seed_engine):
    with pytest.raises(TokenizerError, match="300"):
        seed_engine.generate([1, 300], max_new_tokens=1)
    with pytest.raises(TokenizerError):
        seed_engine.logits([-1])
    with pytest.raises(ValueError, match="temperature"):
        seed_engine.generate("a", temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        seed_engine.generate("a", top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        seed_engine.generate("a", max_new_tokens=-1)
    with pytest.raises(ValueError):
        seed_engine.generate("", max_new_tokens=3)  # byte model: nothing to start from
    with pytest.raises(TypeError):
        seed_engine.logits("text")


def test_steady_state_decode_allocates_under_1kb_per_token():
    engine = Engine.from_config(SEED, seed=42)
    kw = dict(max_new_tokens=50, temperature=0.8)
    engine.generate([1, 2, 3], seed=0, **kw)  # warm-up
    tracemalloc.start()
    try:
        engine.generate([1, 2, 3], seed=1, **kw)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        r = engine.generate([1, 2, 3], seed=2, **kw)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = len(r.tokens)
    assert (after - before) / n < 1024, f"retained {(after - before) / n:.0f} B/token"
    assert (peak - before) / n < 1024, f"peak transient {(peak - before) / n:.0f} B/token"


def test_threads_give_same_logits():
    config = llama_config(n_embd=256, n_hidden=512, n_head=4, n_kv_head=2, vocab_size=300)
    one = Engine.from_config(config, seed=1, n_threads=1)
    two = Engine.from_config(config, seed=1, n_threads=2)
    tokens = list(range(10, 30))
    np.testing.assert_allclose(one.logits(tokens), two.logits(tokens), rtol=1e-5, atol=1e-5)


def test_profile_records_ops_and_layers(seed_engine):
    r = seed_engine.generate("ab", max_new_tokens=5, profile=True, seed=0)
    prof = r.profile
    table = prof.table()
    for op in ("attention", "qkv_matmul", "ffn_matmul", "lm_head"):
        assert op in table
    layers = {row.get("layer") for row in prof.summary(by="layer")}
    assert {0, 1} <= layers



def test_generate_while_a_stream_is_pending_uses_its_own_session(seed_engine):
    kw = dict(max_new_tokens=20, temperature=1.0, seed=4)
    expected = seed_engine.generate("abc", **kw).tokens
    stream = seed_engine.generate("abc", stream=True, **kw)
    first = next(stream)
    other = seed_engine.generate("xyz", max_new_tokens=20, seed=5)  # must not disturb it
    rest = list(stream)
    assert [first.token] + [c.token for c in rest if c.token is not None] == expected
    assert len(other.tokens) == 20
    with pytest.raises(ValueError):
        seed_engine.generate("a", temperature=-1)
    assert not seed_engine._session.busy  # a rejected call does not keep the session


def test_closed_session_raises():
    s = Engine.from_config(SEED).session()
    s.close()
    with pytest.raises(SmallMindError, match="closed"):
        s.generate("a", max_new_tokens=1)
