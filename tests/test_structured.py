"""Structured output, fast half: constraint errors, and constrained generation with the
embedded byte-level model and stories260K (the mask kernel is tested in test_mask.py).

The real-vocabulary checks (every schema of tests/structured_schemas.py on SmolLM2, tool
calls) are in test_structured_models.py.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("llguidance")

from conftest import shared_model
from structured_schemas import UNSUPPORTED

from smallmind import Engine
from smallmind.structured import compile_grammar
from smallmind.structured.constraint import ConstraintError

# -- errors --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_engine() -> Engine:
    return Engine.default()


@pytest.mark.parametrize("name,schema", UNSUPPORTED, ids=[n for n, _ in UNSUPPORTED])
def test_unsupported_schema_is_a_value_error(byte_engine, name, schema):
    with pytest.raises(ValueError, match="invalid json_schema"):
        byte_engine.generate("x", json_schema=schema, max_new_tokens=4)


@pytest.mark.parametrize("kwargs,message,error", [
    ({"regex": "(abc"}, "(?s)invalid regex.*unclosed group", ValueError),
    ({"grammar": "start: missing_rule"}, "(?s)invalid grammar.*unknown name", ValueError),
    ({"json_schema": "{not json"}, "json_schema is not valid JSON", ValueError),
    ({"json_schema": [1, 2]}, "json_schema must be a JSON object", TypeError),
    ({"json_schema": {"type": "object"}, "regex": "a"}, "at most one of", ValueError),
    ({"choices": []}, "choices must be a non-empty list", ValueError),
    ({"choices": "yes"}, "choices must be a non-empty list", ValueError),
    ({"choices": ["a", ""]}, r"choices\[1\] must be a non-empty string", ValueError),
    ({"regex": 42}, "regex must be a string", TypeError),
])
def test_bad_constraints_are_typed_errors_before_any_work(byte_engine, kwargs, message, error):
    with pytest.raises(error, match=message):
        byte_engine.generate("x", max_new_tokens=4, **kwargs)
    # the engine is still usable, and the same session too
    assert byte_engine.generate("x", max_new_tokens=3, temperature=0).finish_reason == "length"


def test_compile_is_cached_and_needs_a_tokenizer(byte_engine):
    a = compile_grammar(byte_engine.tokenizer, 256, regex="[ab]+")
    assert compile_grammar(byte_engine.tokenizer, 256, regex="[ab]+") is a
    assert compile_grammar(byte_engine.tokenizer, 256) is None
    with pytest.raises(ValueError, match="needs a model with a tokenizer"):
        compile_grammar(None, 256, regex="a")


def test_matcher_failure_is_a_typed_error(byte_engine):
    constraint = compile_grammar(byte_engine.tokenizer, 256, regex="ab").start(in_thread=False)
    with pytest.raises(ConstraintError, match="rejected token"):
        constraint.advance(ord("z"))
    constraint.close()


# -- generation with the byte-level model -------------------------------------------------

@pytest.mark.parametrize("in_thread", [True, False])
def test_regex_output_matches(byte_engine, in_thread, monkeypatch):
    monkeypatch.setattr("smallmind.structured.constraint.MASK_IN_THREAD", in_thread)
    pattern = r"[A-Z][a-z]{2,8}( [a-z]{1,8}){2,4}[.!?]"
    for seed in range(5):
        r = byte_engine.generate("ROMEO:", regex=pattern, max_new_tokens=64, temperature=1.0, seed=seed)
        assert r.finish_reason == "stop", r
        assert re.fullmatch(pattern, r.text), r.text


def test_thread_and_inline_masks_give_the_same_tokens(byte_engine, monkeypatch):
    runs = []
    for in_thread in (True, False):
        monkeypatch.setattr("smallmind.structured.constraint.MASK_IN_THREAD", in_thread)
        runs.append(byte_engine.generate("KING:", regex=r"[a-z ]{5,40}\.", max_new_tokens=50, seed=3).tokens)
    assert runs[0] == runs[1]


def test_choices_and_lark_grammar(byte_engine):
    options = ["yes", "no", "perhaps, my lord"]
    for seed in range(4):
        r = byte_engine.generate("Wilt thou? ", choices=options, temperature=1.0, seed=seed)
        assert r.text in options and r.finish_reason == "stop"
    lark = 'start: NAME ": " NUM (", " NUM)*\nNAME: /[A-Z]+/\nNUM: /[1-9][0-9]?/'
    r = byte_engine.generate("", grammar=lark, max_new_tokens=40, temperature=0.9, seed=1)
    assert re.fullmatch(r"[A-Z]+: [1-9][0-9]?(, [1-9][0-9]?)*", r.text), r.text


def test_json_schema_with_the_byte_model_parses_and_validates(byte_engine):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {
        "mood": {"enum": ["merry", "sad"]}, "lines": {"type": "integer", "minimum": 1, "maximum": 40},
        "words": {"type": "array", "maxItems": 3, "items": {"type": "string", "pattern": "^[a-z]{1,6}$"}}},
        "required": ["mood", "lines", "words"], "additionalProperties": False}
    for seed in range(4):
        r = byte_engine.generate("ROMEO:", json_schema=schema, max_new_tokens=120, temperature=0.8, seed=seed)
        assert r.finish_reason == "stop"
        assert r.json == json.loads(r.text)
        jsonschema.validate(r.json, schema)


def test_streaming_and_sessions_carry_the_constraint(byte_engine):
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4}
    stream = byte_engine.generate("ROMEO:", json_schema=schema, stream=True, seed=2, max_new_tokens=40)
    pieces = [chunk.text for chunk in stream]
    assert stream.result is not None and "".join(pieces) == stream.result.text
    assert stream.result.json == json.loads(stream.result.text)
    with byte_engine.session() as s:
        first = s.generate("ROMEO:", choices=["Ay.", "Nay."], seed=0)
        second = s.generate(" JULIET:", regex=r" [a-z]{3,6}\.", seed=0, max_new_tokens=20)
        assert first.text in ("Ay.", "Nay.") and re.fullmatch(r" [a-z]{3,6}\.", second.text)
        assert s.tokens[-len(second.tokens):] == second.tokens


def test_cut_outputs_have_no_value(byte_engine):
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 3}
    r = byte_engine.generate("x", json_schema=schema, max_new_tokens=5, seed=0)
    assert r.finish_reason == "length" and r.json is None and r.text.startswith("[")
    r = byte_engine.generate("x", json_schema=schema, stop=[","], max_new_tokens=40, seed=0)
    assert r.finish_reason == "stop" and r.json is None and "," not in r.text


# -- a SentencePiece vocabulary (llama2.c stories260K) -------------------------------------

@pytest.fixture(scope="module")
def stories() -> Engine:
    base = shared_model("stories260K")
    return Engine.load(base / "stories260K.bin", tokenizer=base / "tok512.bin")


def test_stories260k_regex_json_and_masks_agree_with_the_matcher(stories):
    pattern = r"Once upon a time, [a-z]+ (and [a-z]+ )?went to the [a-z]+\."
    for seed in range(3):
        r = stories.generate("", regex=pattern, max_new_tokens=60, temperature=0.9, seed=seed)
        assert r.finish_reason == "stop" and re.fullmatch(pattern, r.text), r.text
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
                                               "age": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["name", "age"], "additionalProperties": False}
    r = stories.generate("", json_schema=schema, max_new_tokens=60, seed=1)
    assert r.finish_reason == "stop" and set(r.json) == {"name", "age"}
    # Every step's mask allows only tokens the matcher accepts (it may allow fewer: bytes the
    # grammar forces must come in the tokenizer's own spelling), and always some token.
    grammar = compile_grammar(stories.tokenizer, stories.config.vocab_size, json_schema=schema)
    constraint = grammar.start(in_thread=False)
    for token in r.tokens:
        constraint.apply(np.zeros(stories.config.vocab_size, np.float32))
        bits = constraint.bits
        allowed = [t for t in range(stories.config.vocab_size) if (bits[t >> 5] >> (t & 31)) & 1]
        assert token in allowed
        assert all(constraint._matcher.validate_tokens([t]) == 1 for t in allowed)
        constraint.advance(token)
    constraint.close()


def test_mask_worker_runs_each_job_once_and_hands_back_errors():
    from smallmind.structured.constraint import _MaskWorker
    calls = []
    worker = _MaskWorker(lambda: calls.append(1))
    for _ in range(300):  # the helper or the caller runs each job, never both
        worker.submit()
        worker.wait()
    assert len(calls) == 300
    worker.submit()
    worker.close()        # a pending job is run or dropped, and the thread ends
    assert len(calls) in (300, 301) and not worker._thread.is_alive()

    def fail():
        raise RuntimeError("mask failed")
    worker = _MaskWorker(fail)
    for _ in range(3):
        worker.submit()
        with pytest.raises(RuntimeError, match="mask failed"):
            worker.wait()
    worker.close()


def test_abandoned_streams_and_concurrent_sessions_leave_no_threads(byte_engine):
    import gc
    import threading

    def mask_threads() -> int:
        return sum(t.name == "smallmind-mask" for t in threading.enumerate())

    before = mask_threads()
    stream = byte_engine.generate("ROMEO:", regex=r"[a-z ]{20,40}\.", stream=True, seed=0)
    next(stream), next(stream)
    del stream
    gc.collect()
    assert mask_threads() == before
    results: dict[int, str] = {}

    def worker(seed: int) -> None:
        with byte_engine.session() as s:
            results[seed] = s.generate("KING:", regex=r"[a-z]{3,8}( [a-z]{3,8}){2}\.", seed=seed,
                                       max_new_tokens=40).text
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(re.fullmatch(r"[a-z]{3,8}( [a-z]{3,8}){2}\.", text) for text in results.values())
    assert mask_threads() == before


def test_vocabularies_die_with_their_tokenizer():
    import gc
    import weakref

    from smallmind.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    grammar = compile_grammar(tok, 256, regex="[a-z]+")
    vocab = weakref.ref(grammar.vocab)
    del grammar, tok
    gc.collect()
    assert vocab() is None
