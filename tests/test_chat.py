"""Chat templates and the chat REPL (SmolLM2-135M-Instruct: a ChatML template in its GGUF)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import cached_model

from smallmind import Engine, ModelConfig
from smallmind._repl import ChatREPL
from smallmind.chat import encode_chat, render_chat, render_chatml


@pytest.fixture(scope="module")
def smollm2():
    return Engine.load(cached_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_threads=1)


def test_chatml_fallback_without_template():
    engine = Engine.from_config(ModelConfig.seed_small())
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(msgs, engine.tokenizer, engine.chat_template) == render_chatml(msgs) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bad_messages_raise():
    engine = Engine.from_config(ModelConfig.seed_small())
    with pytest.raises(ValueError, match="role"):
        render_chat([{"content": "x"}], engine.tokenizer, None)
    with pytest.raises(ValueError):
        render_chat([], engine.tokenizer, None)


def test_model_template_renders_and_encodes_special_tokens(smollm2):
    assert smollm2.chat_template and "im_start" in smollm2.chat_template
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = render_chat(msgs, smollm2.tokenizer, smollm2.chat_template)
    assert text.endswith("<|im_start|>assistant\n")
    ids = encode_chat(msgs, smollm2.tokenizer, smollm2.chat_template)
    im_start = smollm2.tokenizer.encode("<|im_start|>", parse_special=True)
    assert len(im_start) == 1 and ids.count(im_start[0]) == 3


def test_chat_stops_at_end_of_turn(smollm2):
    im_end = smollm2.tokenizer.encode("<|im_end|>", parse_special=True)[0]
    assert im_end in smollm2.tokenizer.stop_ids()
    msgs = [{"role": "user", "content": "Say hi."}]
    r = smollm2.chat(msgs, max_new_tokens=16, temperature=0.0, logit_bias={im_end: 100.0})
    assert r.finish_reason == "eos" and r.text == "" and r.tokens == []


def test_chat_answer_matches_llama_cpp(smollm2):
    """The rendered prompt and the greedy answer are llama.cpp's (a 135M model's answer
    to this question is not "Paris"; what matters is that both engines say the same)."""
    pytest.importorskip("llama_cpp")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from make_logit_fixtures import open_llama
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    llm = open_llama(smollm2.source, n_ctx=512, n_threads=1, seed=0, logits_all=True)
    ids = encode_chat(msgs, smollm2.tokenizer, smollm2.chat_template)
    assert ids == llm.tokenize(render_chat(msgs, smollm2.tokenizer, smollm2.chat_template).encode(), add_bos=False, special=True)
    ours = smollm2.chat(msgs, max_new_tokens=12, temperature=0.0).tokens
    llm.reset()
    llm.eval(ids)
    theirs, gaps = [], []
    for _ in range(12):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.sort(row)[-2:]
        theirs.append(int(row.argmax()))
        gaps.append(top2[1] - top2[0])
        llm.eval([theirs[-1]])
    # The two greedy runs may only part where llama.cpp's own top-2 logits are within its
    # rounding noise (~0.11 nats, measured in tests/test_fidelity.py).
    split = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if split is not None:
        assert gaps[split] < 0.3, (split, ours, theirs, gaps)


def test_repl_keeps_the_cache_across_turns(smollm2):
    stdin = io.StringIO("What is the capital of France?\nAnd of Italy?\n\n")
    stdout = io.StringIO()
    repl = ChatREPL(smollm2, sampling={"max_new_tokens": 24, "temperature": 0.0},
                    stdin=stdin, stdout=stdout)
    prefilled = []
    original = repl.session.continue_with

    def spy(ids):
        new = original(ids)
        prefilled.append((len(ids), len(new)))
        return new

    repl.session.continue_with = spy
    assert repl.run() == 0
    (total1, new1), (total2, new2) = prefilled
    assert new1 == total1               # first turn: everything is new
    assert new2 < total2 - total1 // 2  # second turn: the first turn came from the cache
    assert len(repl.messages) == 4
    # The first answer is what a one-shot chat call gives.
    first = smollm2.chat(repl.messages[:1], max_new_tokens=24, temperature=0.0).text.strip()
    assert repl.messages[1]["content"] == first
    assert first in stdout.getvalue()
