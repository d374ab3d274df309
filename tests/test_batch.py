"""Batched forward passes and Engine.generate_batch: a sequence's logits and tokens are
identical (bit for bit, token for token) whether it runs alone or in a batch."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import cached_model, shared_model

from smallmind import Engine, ModelConfig, SamplingParams
from smallmind.errors import ShapeError
from smallmind.models.base import PACKED_MIN_ROWS


def _load(name: str) -> Engine:
    if name == "default":
        return Engine.default()
    if name == "stories260K":
        return Engine.load(shared_model("stories260K/stories260K.bin"),
                           tokenizer=shared_model("stories260K/tok512.bin"))
    if name == "random-llama":
        config = ModelConfig(arch="llama", vocab_size=97, n_ctx=300, n_embd=48, n_layer=2, n_head=4,
                             n_kv_head=2, n_hidden=80, bias=False, tie_embeddings=True, norm_eps=1e-5,
                             rope_theta=10000.0)
        return Engine.from_config(config, seed=5)
    return Engine.load(cached_model(name), n_threads=2)


# GPT-2 (embedded, F32/F16 weights), llama2.c (F32), SmolLM2 (Q4_1), Gemma 3 (K-quants,
# sliding windows, soft-capped logits), and random float weights.
MODELS = ["default", "stories260K", "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf",
          "random-llama"]


@pytest.fixture(scope="module", params=MODELS)
def engine(request) -> Engine:
    return _load(request.param)


def _greedy_alone(model, prompt: list[int], steps: int, capacity: int, n_threads: int) -> list[np.ndarray]:
    state = model.new_state(capacity=capacity, n_threads=n_threads)
    try:
        out = [model.forward(state, prompt).logits.copy()]
        for _ in range(steps):
            out.append(model.forward(state, [int(np.argmax(out[-1]))]).logits.copy())
        return out
    finally:
        state.close()


def test_batched_decode_rows_equal_unbatched(engine):
    """Ten sequences (more rows than the float kernels' packed threshold) decode together;
    every step's logits equal those of the sequence alone, bit for bit."""
    model, nt = engine.model, engine.n_threads
    rng = np.random.default_rng(1)
    lengths = [3, 20, 9, 1, 140, 5, 2, 33, 8, 7]
    assert len(lengths) > PACKED_MIN_ROWS
    prompts = [rng.integers(0, engine.config.vocab_size, size=k).tolist() for k in lengths]
    steps, capacity = 5, 200
    alone = [_greedy_alone(model, p, steps, capacity, nt) for p in prompts]
    states = [model.new_state(capacity=capacity, n_threads=nt) for _ in prompts]
    batch = model.new_batch(max_seqs=len(prompts), capacity=capacity, n_threads=nt)
    try:
        logits = [model.forward(s, p).logits.copy() for s, p in zip(states, prompts, strict=True)]
        for step in range(steps + 1):
            for i, row in enumerate(logits):
                np.testing.assert_array_equal(row, alone[i][step], err_msg=f"sequence {i}, step {step}")
            if step == steps:
                break
            fwd = model.forward_batch(batch, [(s, [int(np.argmax(row))]) for s, row in zip(states, logits,
                                                                                          strict=True)])
            assert fwd.logits.shape == (len(prompts), engine.config.vocab_size)
            assert fwd.peaks.tolist() == [int(np.argmax(row)) for row in fwd.logits]  # the head's
            logits = [row.copy() for row in fwd.logits]
    finally:
        batch.close()
        for s in states:
            s.close()


def test_batched_prompt_segments_equal_unbatched(engine):
    """Prompt chunks of several sequences in one call (packed and row-kernel segments mixed,
    given in any order) give each sequence's last logits exactly as a forward of its own."""
    model, nt = engine.model, engine.n_threads
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, engine.config.vocab_size, size=k).tolist() for k in (1, 30, 4, 12, 7)]
    alone = [_greedy_alone(model, p, 0, 64, nt)[0] for p in prompts]
    states = [model.new_state(capacity=64, n_threads=nt) for _ in prompts]
    batch = model.new_batch(max_seqs=5, capacity=64, max_tokens=64, n_threads=nt)
    try:
        fwd = model.forward_batch(batch, list(zip(states, prompts, strict=True)))
        for i, row in enumerate(fwd.logits):
            np.testing.assert_array_equal(row, alone[i], err_msg=f"sequence {i}")
        assert fwd.peaks.tolist() == [int(np.argmax(row)) for row in fwd.logits]
        assert [s.cache.length for s in states] == [len(p) for p in prompts]
    finally:
        batch.close()
        for s in states:
            s.close()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_p=0.95, seed=11),
                                      dict(temperature=1.0, top_k=20, repetition_penalty=1.2, seed=3)])
def test_generate_batch_equals_generate(engine, sampling):
    """Six prompts, at most four at a time (the rest join as others finish): each result is,
    token for token, generate() alone with seed s + i."""
    if engine.tokenizer is None:
        prompts = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21], [3, 3, 3], [40]]
    else:
        prompts = ["Once upon a time", "The", "ROMEO: what light through yonder window breaks?", "1, 2, 3,",
                   "", "A"]
    results = engine.generate_batch(prompts, max_new_tokens=12, max_batch=4, **sampling)
    assert len(results) == len(prompts)
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        kw = dict(sampling)
        if "seed" in kw:
            kw["seed"] += i
        alone = engine.generate(prompt, max_new_tokens=12, **kw)
        assert result.tokens == alone.tokens, f"prompt {i}"
        assert (result.text, result.finish_reason, result.prompt_tokens) == \
            (alone.text, alone.finish_reason, alone.prompt_tokens)
        assert result.timings.decode_tokens == len(result.tokens)


def test_generate_batch_per_prompt_params_and_stops():
    engine = Engine.default()
    params = [SamplingParams(temperature=0.8, seed=5, max_new_tokens=30, stop=["\n"]),
              SamplingParams(temperature=0.0, max_new_tokens=3),
              SamplingParams(max_new_tokens=0)]
    results = engine.generate_batch(["ROMEO:", "JULIET:", "KING:"], params)
    for prompt, p, r in zip(["ROMEO:", "JULIET:", "KING:"], params, results, strict=True):
        alone = engine.generate(prompt, p)
        assert (r.tokens, r.text, r.finish_reason) == (alone.tokens, alone.text, alone.finish_reason)
    assert results[2].tokens == [] and results[2].finish_reason == "length"
    assert "\n" not in results[0].text


def test_generate_batch_arguments():
    engine = Engine.default()
    assert engine.generate_batch([]) == []
    with pytest.raises(TypeError, match="prompts"):
        engine.generate_batch("ROMEO:")
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        engine.generate_batch(["a", 3])
    with pytest.raises(ValueError, match="params"):
        engine.generate_batch(["a", "b"], [SamplingParams()])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        engine.generate_batch(["a"], [{"temperature": 0}])
    with pytest.raises(ValueError, match="max_batch"):
        engine.generate_batch(["a"], max_batch=0)
    with pytest.raises(TypeError, match="max_batch"):
        engine.generate_batch(["a"], max_batch=2.0)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate_batch(["a"], temperature=-1)
    with pytest.raises(Exception, match=r"prompts\[1\]"):
        engine.generate_batch(["a", "x" * (engine.n_ctx + 5)])
    # nothing was left claimed: the engine still generates
    assert engine.generate("a", max_new_tokens=2, temperature=0).tokens


def test_forward_batch_checks_its_arguments():
    engine = Engine.default()
    model = engine.model
    states = [model.new_state(capacity=16) for _ in range(3)]
    batch = model.new_batch(max_seqs=2, capacity=16, max_tokens=8)
    try:
        with pytest.raises(ShapeError, match="sequences"):
            model.forward_batch(batch, [(s, [1]) for s in states])
        with pytest.raises(ShapeError, match="rows"):
            model.forward_batch(batch, [(states[0], [1] * 5), (states[1], [2] * 5)])
        with pytest.raises(ShapeError, match="no tokens"):
            model.forward_batch(batch, [(states[0], [])])
        with pytest.raises(ShapeError, match="twice"):
            model.forward_batch(batch, [(states[0], [1]), (states[0], [2])])
        with pytest.raises(ShapeError, match="packed"):
            model.forward_batch(batch, [(states[0], [1])], packed=[True, False])
        big = model.new_state(capacity=32)
        with pytest.raises(ShapeError, match="attention scratch"):
            model.forward_batch(batch, [(big, [1])])
        big.close()
        assert [s.cache.length for s in states] == [0, 0, 0]
        fwd = model.forward_batch(batch, [(states[0], [1, 2]), (states[1], [3])])
        assert fwd.logits.shape == (2, engine.config.vocab_size) and fwd.shifts == ((), ())
    finally:
        batch.close()
        for s in states:
            s.close()


def test_generate_batch_structured_per_sequence():
    pytest.importorskip("llguidance")
    engine = Engine.load(cached_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_threads=2)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    prompts = ["A person as JSON:", "Describe Ada Lovelace as JSON:", "Give me JSON:"]
    results = engine.generate_batch(prompts, json_schema=schema, max_new_tokens=40, temperature=0.7, seed=4)
    for i, (prompt, r) in enumerate(zip(prompts, results, strict=True)):
        alone = engine.generate(prompt, json_schema=schema, max_new_tokens=40, temperature=0.7, seed=4 + i)
        assert (r.tokens, r.json, r.finish_reason) == (alone.tokens, alone.json, alone.finish_reason)
    choices = engine.generate_batch(["Yes or no?", "Pick one:"], choices=["yes", "no"], temperature=0)
    assert all(r.text in ("yes", "no") for r in choices)


def test_an_engine_is_freed_without_the_garbage_collector():
    """The engine's cached session reaches it through a weak proxy: no reference cycle."""
    import gc
    import weakref

    gc.disable()
    try:
        engine = Engine.default()
        assert engine.generate("ROMEO:", max_new_tokens=3, temperature=0).tokens
        ref = weakref.ref(engine)
        del engine
        assert ref() is None
        stream = Engine.default().generate("ROMEO:", max_new_tokens=4, temperature=0, stream=True)
        assert len([c for c in stream if c.token is not None]) == 4  # the stream keeps its engine
    finally:
        gc.enable()
