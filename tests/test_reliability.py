"""Sessions that cannot be corrupted, limits that keep the work, inputs checked at the door
(issue #9): one test or more per item."""
from __future__ import annotations

import gc
import math
import shutil
import threading

import numpy as np
import pytest
from conftest import shared_model

from smallmind import Engine, ModelConfig, SamplingParams
from smallmind._core._pool import default_pool
from smallmind.errors import (
    ContextOverflowError,
    ModelFormatError,
    NonFiniteError,
    SessionBusyError,
    SmallMindError,
    StaleStreamError,
    TokenizerError,
)
from smallmind.formats.gguf_writer import llama_metadata, write_gguf
from smallmind.models import build_model
from smallmind.models.init import random_tensors

SEED = ModelConfig.seed_small()


def llama_config(**kw) -> ModelConfig:
    base = dict(arch="llama", vocab_size=256, n_ctx=256, n_embd=64, n_layer=2, n_head=4,
                n_kv_head=2, n_hidden=96, bias=False, tie_embeddings=True)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def seed_engine():
    return Engine.from_config(SEED, seed=42)


@pytest.fixture(scope="module")
def llama_engine():
    return Engine.from_config(llama_config(), seed=7)


def greedy_next(engine, tokens):
    return int(np.argmax(engine.logits(tokens)[-1]))


def assert_consistent(session):
    """The session's cache holds exactly its history: the next greedy token equals a fresh
    computation over session.tokens."""
    engine = session.engine
    expected = greedy_next(engine, session.tokens)
    got = session.generate([], max_new_tokens=1, temperature=0.0).tokens
    assert got == [expected]


# -- 1. one call at a time --------------------------------------------------------------------
def test_second_concurrent_call_on_a_session_gets_busy_error(llama_engine):
    s = llama_engine.session()
    s.generate([1, 2, 3], max_new_tokens=1, temperature=0.0)
    errors: list[BaseException] = []
    started, done = threading.Event(), threading.Event()

    def long_call():
        started.set()
        try:
            s.generate([4, 5], max_new_tokens=200, temperature=0.0)
        finally:
            done.set()

    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    while not done.is_set():
        try:
            s.generate([9], max_new_tokens=1)
        except SessionBusyError as exc:
            errors.append(exc)
            break
        except ContextOverflowError:
            break
    t.join()
    assert errors and isinstance(errors[0], SmallMindError)
    assert "one call at a time" in str(errors[0])
    assert_consistent(s)


def test_busy_session_refuses_every_mutating_call(seed_engine):
    s = seed_engine.session()
    with s._claim():  # as if another thread were inside generate
        for call in (lambda: s.generate("a", max_new_tokens=1), s.reset, s.close,
                     lambda: s.continue_with([1, 2])):
            with pytest.raises(SessionBusyError):
                call()
    assert s.generate("ab", max_new_tokens=2).tokens  # and free again afterwards


def test_sessions_on_threads_give_the_sequential_tokens(llama_engine):
    prompts = [[1 + i, 2 + i, 3 + i] for i in range(4)]
    kw = dict(max_new_tokens=24, temperature=0.9)
    expected = [llama_engine.generate(p, seed=i, **kw).tokens for i, p in enumerate(prompts)]
    got: dict[int, list[int]] = {}

    def worker(i):
        with llama_engine.session() as s:
            got[i] = s.generate(prompts[i], seed=i, **kw).tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(4)] == expected
    # Engine.generate from threads: each caller gets its own session when the cached one is busy,
    # and those sessions are freed as soon as their calls return (no cycle waits for the GC).
    live = default_pool().stats().live_bytes
    gc.disable()
    out: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, llama_engine.generate(prompts[i], seed=i, **kw).tokens)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
        assert default_pool().stats().live_bytes == live
    finally:
        gc.enable()
    assert [out[i] for i in range(4)] == expected


# -- 2. limits keep the work -------------------------------------------------------------------
def test_prompt_too_long_is_refused_up_front_and_the_session_survives(seed_engine):
    s = seed_engine.session()
    with pytest.raises(ContextOverflowError, match="prompt is 70 tokens, context is 64"):
        s.generate(list(range(70)), max_new_tokens=5)
    assert s.tokens == [] and s._state.cache.length == 0
    assert len(s.generate([1, 2], max_new_tokens=3).tokens) == 3


def test_reaching_the_context_end_returns_everything(seed_engine):
    prompt = list(range(1, 11))
    r = seed_engine.generate(prompt, max_new_tokens=300, temperature=0.0)
    assert r.finish_reason == "length"
    assert len(r.tokens) == 64 - len(prompt) + 1  # the last token needs no slot of its own
    chunks = list(seed_engine.generate(prompt, max_new_tokens=300, temperature=0.0, stream=True))
    assert [c.token for c in chunks if c.token is not None] == r.tokens
    # Same tokens as recomputation: nothing was lost or shifted.
    seq = prompt + r.tokens
    full = seed_engine.logits(seq[:64])
    assert r.tokens == [int(np.argmax(full[len(prompt) - 1 + i])) for i in range(len(r.tokens))]


def test_full_session_refuses_more_then_works_after_reset(seed_engine):
    s = seed_engine.session()
    s.generate([1, 2, 3], max_new_tokens=100, temperature=0.0)
    with pytest.raises(ContextOverflowError, match="prompt is 1 tokens, context is 64 and the "
                                                   "conversation already holds 65"):
        s.generate([5], max_new_tokens=1)
    assert len(s.tokens) == 65
    s.reset()
    assert s.generate([1, 2, 3], max_new_tokens=4).finish_reason == "length"


def test_default_model_generates_300_tokens_request_without_losing_them():
    engine = Engine.default()
    r = engine.generate("ROMEO:", max_new_tokens=300, seed=0)
    assert r.finish_reason == "length" and len(r.tokens) == engine.n_ctx - len(r.prompt_tokens) + 1


def test_chat_repl_says_in_one_line_when_the_context_is_full(seed_engine):
    import io

    from smallmind._repl import ChatREPL
    out, err = io.StringIO(), io.StringIO()
    repl = ChatREPL(seed_engine, sampling=dict(max_new_tokens=200, temperature=0.0), stdout=out,
                    stderr=err)
    repl.turn("hi")  # 47 tokens of ChatML: the answer runs into the end of the 64 context
    assert "stopped at the end of the context (64 tokens)" in err.getvalue()
    assert len(repl.session.tokens) <= 64
    repl.turn("more")  # no room for both turns: the oldest exchange is forgotten, in one line
    assert "forgot the 1 oldest exchange" in err.getvalue()
    assert [m["content"] for m in repl.messages if m["role"] == "user"] == ["more"]
    assert len(repl.session.tokens) <= 64


# -- 3. stale streams ---------------------------------------------------------------------------
def test_resuming_a_stale_stream_raises_and_the_session_stays_consistent(llama_engine):
    s = llama_engine.session()
    stream = s.generate([1, 2, 3], max_new_tokens=40, temperature=1.0, seed=1, stream=True)
    for _ in range(5):
        next(stream)
    assert s.busy
    s.generate([7, 8], max_new_tokens=5, temperature=0.0)
    with pytest.raises(StaleStreamError):
        next(stream)
    assert len(s.tokens) == 3 + 5 + 2 + 5
    assert_consistent(s)


def test_engine_stream_pending_does_not_block_engine_generate(seed_engine):
    kw = dict(max_new_tokens=20, temperature=1.0, seed=4)
    expected = seed_engine.generate("abc", **kw).tokens
    stream = seed_engine.generate("abc", stream=True, **kw)
    first = next(stream)
    seed_engine.generate("xyz", max_new_tokens=5)
    assert [first.token] + [c.token for c in stream if c.token is not None] == expected


# -- 4. per-call threads do not stick ------------------------------------------------------------
def test_per_call_threads_do_not_stick_and_bad_values_change_nothing(llama_engine):
    s = llama_engine.session(n_threads=2)
    s.generate([1, 2], max_new_tokens=2, n_threads=1)
    assert s._state.n_threads == 1
    s.generate([3], max_new_tokens=2)
    assert s._state.n_threads == 2 and s.n_threads == 2
    for bad, exc in ((0, ValueError), (-1, ValueError), (2**31, ValueError), (1.5, TypeError),
                     (True, TypeError), ("2", TypeError)):
        with pytest.raises(exc, match="n_threads"):
            s.generate([3], max_new_tokens=1, n_threads=bad)
        with pytest.raises(exc, match="n_threads"):
            llama_engine.session(n_threads=bad)
        with pytest.raises(exc, match="n_threads"):
            llama_engine.generate([3], max_new_tokens=1, n_threads=bad)
    assert llama_engine.generate([3], max_new_tokens=2).tokens  # later calls unaffected
    with pytest.raises(ValueError, match="n_threads"):
        Engine.default(n_threads=-1)


# -- 5. no reference cycles: dropped sessions free their buffers at once -------------------------
def test_thousand_dropped_sessions_keep_pool_bytes_flat(seed_engine):
    pool = default_pool()
    seed_engine.session().generate([1, 2], max_new_tokens=2)
    gc.disable()
    try:
        before = pool.stats().live_bytes
        for i in range(1000):
            s = seed_engine.session()
            if i % 100 == 0:
                s.generate([1, 2, 3], max_new_tokens=2)
            del s
        after = pool.stats().live_bytes
    finally:
        gc.enable()
    assert after == before


def test_sliding_session_has_no_reference_cycle():
    engine = Engine.from_config(llama_config(n_ctx=32), seed=3)
    s = engine.session(overflow="shift", n_keep=2)
    s.generate(list(range(1, 20)), max_new_tokens=40, temperature=0.0)
    assert s._state.cache.n_discarded > 0
    gc.disable()
    try:
        live = default_pool().stats().live_bytes
        del s
        assert default_pool().stats().live_bytes < live
    finally:
        gc.enable()


# -- 6. tokenizers -------------------------------------------------------------------------------
def test_llama2c_model_alone_is_refused_naming_the_tokenizer(tmp_path):
    src = shared_model("stories260K/stories260K.bin")
    model = tmp_path / "stories260K.bin"
    shutil.copy(src, model)
    with pytest.raises(TokenizerError, match="tokenizer"):
        Engine.load(model)
    engine = Engine.load(model, tokenizer=src.with_name("tok512.bin"))
    assert engine.generate("Once", max_new_tokens=3).tokens


def test_damaged_gguf_tokenizer_is_refused(tmp_path):
    config = llama_config(vocab_size=300)
    meta = llama_metadata(config)
    meta["tokenizer.ggml.model"] = "llama"
    meta["tokenizer.ggml.tokens"] = ["a", "b"]  # a vocabulary that cannot encode or decode text
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", meta, random_tensors(config, seed=1))
    with pytest.raises(SmallMindError):
        Engine.load(path)


# -- 7. hyper-parameters and memory --------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("llama.attention.layer_norm_rms_epsilon", math.inf), ("llama.attention.layer_norm_rms_epsilon", math.nan),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5), ("llama.attention.layer_norm_rms_epsilon", 1e38),
    ("llama.rope.freq_base", math.inf), ("llama.rope.freq_base", math.nan),
    ("llama.rope.freq_base", -10000.0), ("llama.rope.freq_base", 1e38),
    ("llama.context_length", 2**40),
])
def test_insane_hyper_parameters_are_refused(tmp_path, key, value):
    config = llama_config()
    meta = llama_metadata(config)
    meta[key] = value
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", meta, random_tensors(config, seed=1))
    with pytest.raises(ModelFormatError, match="norm_eps|rope_theta|n_ctx"):
        Engine.load(path)


def test_huge_context_is_refused_naming_the_bytes(monkeypatch):
    import smallmind.engine as engine_module
    monkeypatch.setattr(engine_module, "_physical_memory", lambda: 8 << 30)
    model = shared_model("stories260K/stories260K.bin")
    with pytest.raises(ContextOverflowError, match=r"n_ctx=10000000 needs [\d,]+ bytes"):
        Engine.load(model, n_ctx=10**7)


def test_default_context_is_capped_at_8192_and_n_ctx_raises_it():
    config = llama_config(n_ctx=40000)
    model = build_model(config, random_tensors(config, seed=0))
    assert Engine(model, None).n_ctx == 8192
    assert Engine(model, None, n_ctx=10000).n_ctx == 10000
    with pytest.raises(ValueError, match="n_ctx"):
        Engine(model, None, n_ctx=50000)


# -- 8. non-finite activations -------------------------------------------------------------------
def test_huge_weight_raises_naming_layer_and_position_and_rolls_back():
    config = llama_config()
    tensors = random_tensors(config, seed=2)
    w = tensors["blk.1.ffn_down.weight"].data.copy()
    w[3, :] = 3e38  # the row sums past float32 range: inf in layer 1
    tensors["blk.1.ffn_down.weight"] = type(tensors["blk.1.ffn_down.weight"])(
        "blk.1.ffn_down.weight", tensors["blk.1.ffn_down.weight"].type, w.shape, w)
    engine = Engine(build_model(config, tensors), None)
    s = engine.session()
    with pytest.raises(NonFiniteError, match=r"layer 1 at position 0"):
        s.generate([1, 2, 3], max_new_tokens=5, temperature=0.0)
    assert s.tokens == [] and s._state.cache.length == 0


def test_infinite_logit_is_refused():
    config = llama_config()
    tensors = random_tensors(config, seed=2)
    norm = tensors["output_norm.weight"].data.copy()
    norm[:] = 3e38
    tensors["output_norm.weight"] = type(tensors["output_norm.weight"])(
        "output_norm.weight", tensors["output_norm.weight"].type, norm.shape, norm)
    engine = Engine(build_model(config, tensors), None)
    with pytest.raises(NonFiniteError, match="output head"):
        engine.generate([1, 2, 3], max_new_tokens=2)


# -- 10. strict arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(prompt=b"abc"), TypeError, "prompt"),
    (dict(prompt=[1.0, 2.0]), TypeError, "prompt"),
    (dict(prompt=np.array([1.5])), TypeError, "prompt"),
    (dict(prompt=[None]), TypeError, "prompt"),
    (dict(prompt=[2**63]), ValueError, "prompt"),
    (dict(prompt=None), TypeError, "prompt"),
    (dict(max_new_tokens=1.5), TypeError, "max_new_tokens"),
    (dict(max_new_tokens="3"), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(stop=[None]), TypeError, "stop"),
    (dict(stop=b"x"), TypeError, "stop"),
    (dict(stop=[""]), ValueError, "stop"),
    (dict(stream="yes"), TypeError, "stream"),
    (dict(profile=1), TypeError, "profile"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(seed=2**70 * 1.0), TypeError, "seed"),
    (dict(tempreature=0.5), TypeError, "temperature"),
    (dict(add_special="no"), TypeError, "add_special"),
])
def test_generate_arguments_are_checked_strictly(seed_engine, kwargs, exc, name):
    prompt = kwargs.pop("prompt", "ab")
    with pytest.raises(exc, match=name):
        seed_engine.generate(prompt, max_new_tokens=kwargs.pop("max_new_tokens", 2), **kwargs)
    assert not seed_engine._session.busy


@pytest.mark.parametrize("bad,exc", [(np.array([1.5]), TypeError), ([1.5], TypeError),
                                     ([None], TypeError), ("text", TypeError), ([2**63], ValueError),
                                     ([], ValueError)])
def test_logits_arguments_are_checked_strictly(seed_engine, bad, exc):
    with pytest.raises(exc):
        seed_engine.logits(bad)


@pytest.mark.parametrize("kwargs,exc", [(dict(n_keep=-1), ValueError), (dict(n_keep=1.5), TypeError),
                                        (dict(overflow="wrap"), ValueError), (dict(overflow=None), ValueError)])
def test_session_arguments_are_checked_strictly(llama_engine, kwargs, exc):
    with pytest.raises(exc):
        llama_engine.session(**kwargs)


def test_params_object_and_keywords_agree(seed_engine):
    p = SamplingParams(max_new_tokens=6, temperature=0.7, seed=3, penalty_last_n=8,
                       repetition_penalty=1.3)
    a = seed_engine.generate("ab", p).tokens
    b = seed_engine.generate("ab", max_new_tokens=6, temperature=0.7, seed=3, penalty_last_n=8,
                             repetition_penalty=1.3).tokens
    c = seed_engine.generate("ab", SamplingParams(max_new_tokens=1), max_new_tokens=6, temperature=0.7,
                             seed=3, penalty_last_n=8, repetition_penalty=1.3).tokens
    assert a == b == c and len(a) == 6
    assert all(SamplingParams.help()[name] for name in SamplingParams.names())


# -- 11. stop strings: the context keeps what the model saw --------------------------------------
def test_stop_text_is_cut_from_the_result_but_kept_in_the_context(seed_engine):
    bias = {ord("a"): 30.0, ord("b"): 29.5}
    s = seed_engine.session()
    r = s.generate("x", max_new_tokens=40, temperature=1.0, seed=3, logit_bias=bias, stop=["ba"])
    assert r.finish_reason == "stop" and "ba" not in r.text
    spelled = bytes(r.tokens).decode()
    assert r.text + "ba" == spelled[:len(r.text) + 2]   # the tokens spelled the stop string...
    assert s.tokens == list(b"x") + r.tokens             # ...and the context keeps them


def test_decode_refuses_non_integer_ids(seed_engine):
    tok = seed_engine.tokenizer
    with pytest.raises(TypeError, match="integer"):
        tok.decode([1.5])
    with pytest.raises(TypeError):
        tok.decode(np.array([65.0]))
    with pytest.raises(TypeError):
        tok.decode(b"AB")
    assert tok.decode(np.array([65, 66])) == "AB"


def test_cli_options_are_derived_from_sampling_params():
    from smallmind.cli import _sampling, build_parser
    args = build_parser().parse_args(["generate", "x", "--top-p", "0.9", "--stop", "a", "--stop", "b",
                                      "-n", "5", "--penalty-last-n", "16"])
    p = _sampling(args)
    assert (p.top_p, p.stop, p.max_new_tokens, p.temperature, p.penalty_last_n) == (0.9, ("a", "b"), 5, 0.8, 16)
    names = {o.name for o in SamplingParams.options()}
    assert names == set(SamplingParams.names()) and "penalty_last_n" in names
