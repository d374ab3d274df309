"""smallmind against llama.cpp on the same GGUF files.

The SmolLM2 tests read a stored llama.cpp reference (``tests/fixtures/smollm2_q4_1_reference.npz``,
written by ``tools/make_logit_fixtures.py``; llama.cpp itself is not needed to run them). The
stories260K test runs llama.cpp live (llama-cpp-python, a test/benchmark tool only) on a GGUF
converted by ``tools/llama2c_to_gguf.py``.

Tolerances: mean KL(llama.cpp || smallmind) < 0.02 nats over the teacher-forced positions, and
top-1 agreement >= 98% on the positions that are not near-ties of the comparison (see
test_teacher_forced_logits_match_llama_cpp for how that is measured, not guessed). Both engines
round differently (llama.cpp multiplies Q4_1 weights by Q8_1-rounded activations with fp16
scales and keeps an fp16 KV cache) so bit-equality is not expected; two llama.cpp runs at
different thread counts agree to KL ~1e-9 (``make_logit_fixtures.py --self-check``). The KL
is over coarsened distributions (the reference's top-32 ids plus one "other" bucket), a lower
bound of the full-vocabulary KL; see the tool's docstring.
Greedy continuations are compared token by token up to the first near-tie in the reference,
a step whose top-2 log-probabilities are closer than ``NEAR_TIE`` nats, where a legitimate
rounding difference may pick the other token.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cached_model, shared_model

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "smollm2_q4_1_reference.npz"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEAR_TIE = 0.01  # nats between the reference's top-2 log-probabilities
MIN_TOP1 = 0.98
MAX_MEAN_KL = 0.02
GREEDY_COMPARED = 16


def _load_tool():
    """tools/make_logit_fixtures.py: the KL definition and the llama.cpp loader live there."""
    spec = importlib.util.spec_from_file_location(
        "make_logit_fixtures", REPO / "tools" / "make_logit_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def first_near_tie(gaps: np.ndarray, threshold: float = NEAR_TIE) -> int:
    """Index of the first step whose top-2 gap is below threshold, or len(gaps)."""
    ties = np.flatnonzero(np.asarray(gaps) < threshold)
    return int(ties[0]) if ties.size else len(gaps)


@pytest.fixture(scope="module")
def reference() -> dict:
    with np.load(FIXTURE, allow_pickle=False) as data:
        ref = {name: data[name] for name in data.files}
    ref["meta"] = json.loads(str(ref["meta"]))
    ref["text"] = str(ref["text"])
    return ref


@pytest.fixture(scope="module")
def smollm2(reference):
    path = cached_model(SMOLLM2)
    digest = tool.sha256_of(path)
    if digest != reference["meta"]["model_sha256"]:
        pytest.fail(f"{path} (sha256 {digest}) is not the file the fixture was made from "
                    f"({reference['meta']['model_sha256']}); rerun tools/make_logit_fixtures.py")
    from smallmind import Engine
    return Engine.load(path, n_ctx=1024)


# -- the comparison metric itself ------------------------------------------------------------
def test_coarse_kl_is_a_lower_bound_of_the_full_kl():
    rng = np.random.default_rng(0)
    vocab, k = 300, 32
    p_logits = rng.normal(0, 3, size=(20, vocab))
    q_logits = p_logits + rng.normal(0, 0.5, size=p_logits.shape)
    p_lp, _ = tool.log_softmax64(p_logits)
    q_lp, _ = tool.log_softmax64(q_logits)
    full = (np.exp(p_lp) * (p_lp - q_lp)).sum(axis=-1)
    ids = tool.top_k_rows(p_lp, k)
    _, p_lse = tool.log_softmax64(p_logits)
    other = tool.outside_logprob(p_logits, p_lse, ids)
    coarse = tool.coarse_kl(ids, np.take_along_axis(p_lp, ids, axis=-1), other, q_logits)
    assert np.all(coarse >= -1e-12)
    assert np.all(coarse <= full + 1e-12)
    assert coarse.mean() > 0.3 * full.mean()  # and not vacuously small
    same = tool.coarse_kl(ids, np.take_along_axis(p_lp, ids, axis=-1), other, p_logits)
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    # When the top-K covers the whole vocabulary the coarse KL is the full KL.
    all_ids = tool.top_k_rows(p_lp, vocab)
    exact = tool.coarse_kl(all_ids, np.take_along_axis(p_lp, all_ids, axis=-1),
                           np.full(len(p_lp), -np.inf), q_logits)
    np.testing.assert_allclose(exact, full, rtol=1e-9, atol=1e-12)


def test_fixture_is_consistent(reference):
    meta = reference["meta"]
    assert meta["n_positions"] == len(reference["tokens"]) >= 512
    assert reference["topk_ids"].shape == (len(reference["tokens"]), meta["top_k"])
    # Top-K log-probabilities plus the "other" mass make a distribution.
    for prefix in ("", "exact_"):
        mass = np.exp(reference[prefix + "topk_logprobs"].astype(np.float64)).sum(axis=-1) \
            + np.exp(reference[prefix + "other_logprob"].astype(np.float64))
        np.testing.assert_allclose(mass, 1.0, atol=1e-5)
        assert np.all(np.diff(reference[prefix + "topk_logprobs"], axis=-1) <= 0)


# -- SmolLM2-135M-Instruct Q4_1 against the stored llama.cpp reference ------------------------
def test_tokenizer_matches_llama_cpp(smollm2, reference):
    add_bos = reference["meta"]["add_bos"]
    ids = smollm2.tokenizer.encode(reference["text"], add_special=add_bos)
    expected = reference["tokens"].tolist()
    first_diff = next((i for i, (a, b) in enumerate(zip(ids, expected, strict=False)) if a != b),
                      min(len(ids), len(expected)))
    assert ids == expected, f"tokenisation differs from llama.cpp's at token {first_diff}"
    prompt = smollm2.tokenizer.encode(str(reference["greedy_prompt"]), add_special=add_bos)
    assert prompt == reference["greedy_prompt_ids"].tolist()


def test_greedy_capital_of_france_starts_with_paris(smollm2, reference):
    assert str(reference["greedy_text"]).startswith(" Paris")  # llama.cpp's answer
    result = smollm2.generate(str(reference["greedy_prompt"]), max_new_tokens=8,
                              temperature=0.0, seed=0)
    print(f"smallmind: {reference['greedy_prompt']!s}{result.text!r}")
    assert result.text.startswith(" Paris"), result.text


def _top1(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray | None = None) -> float:
    agree = logits.argmax(axis=-1) == ids[:, 0]
    return float(agree[mask].mean() if mask is not None else agree.mean())


@pytest.fixture(scope="module")
def teacher_forced(smollm2, reference) -> np.ndarray:
    tokens = reference["tokens"]
    logits = smollm2.logits(tokens.tolist())
    assert logits.shape == (len(tokens), smollm2.config.vocab_size)
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    return logits


def test_teacher_forced_logits_match_llama_cpp(teacher_forced, reference):
    # How close can an engine get? The fixture also holds an exact float64 forward pass of the
    # same dequantised weights; llama.cpp's own rounding (Q8_1 activations with fp16 scales,
    # fp16 KV cache) moves its top-2 gap by `gap_error_std` (~0.11 nats) from that, and the
    # exact computation agrees with llama.cpp's top-1 at only ~96.6% of the positions. So a
    # flat 98% over *all* positions would demand copying llama.cpp's rounding. Positions
    # whose reference top-2 gap is below 2 * gap_error_std are near-ties of the comparison:
    # 98% is required on the others (the exact computation scores ~99.6% there), and overall
    # within 2 points of the exact computation's agreement.
    exact = reference["meta"]["exact_vs_llama_cpp"]
    logits, ids = teacher_forced, reference["topk_ids"]
    lp = reference["topk_logprobs"]
    clear = (lp[:, 0] - lp[:, 1]) >= 2 * exact["gap_error_std"]
    top1, top1_clear = _top1(logits, ids), _top1(logits, ids, clear)
    kl = tool.coarse_kl(ids, lp, reference["other_logprob"], logits)
    print(f"\nSmolLM2 Q4_1, {len(ids)} teacher-forced positions vs llama.cpp "
          f"{reference['meta']['llama_cpp_python']}: top-1 agreement {top1:.4f} "
          f"(exact float64: {exact['top1_agreement']:.4f}); on the {int(clear.sum())} positions "
          f"with top-2 gap >= {2 * exact['gap_error_std']:.3f}: {top1_clear:.4f} (exact: "
          f"{exact['top1_agreement_clear']:.4f}); KL(llama.cpp||smallmind) mean {kl.mean():.5f} "
          f"(exact: {exact['kl_mean']:.5f}) median {np.median(kl):.5f} "
          f"p99 {np.quantile(kl, 0.99):.5f} max {kl.max():.5f}")
    assert kl.mean() < MAX_MEAN_KL, f"mean KL {kl.mean():.5f} >= {MAX_MEAN_KL}"
    assert top1_clear >= MIN_TOP1, f"top-1 agreement off near-ties {top1_clear:.4f} < {MIN_TOP1}"
    assert top1 >= exact["top1_agreement"] - 0.02, f"top-1 agreement {top1:.4f}"


def test_teacher_forced_logits_match_exact_arithmetic(teacher_forced, reference):
    """The same checks against the float64 forward pass (truth for these weights)."""
    exact = reference["meta"]["exact_vs_llama_cpp"]
    ids, lp = reference["exact_topk_ids"], reference["exact_topk_logprobs"]
    clear = (lp[:, 0] - lp[:, 1]) >= 2 * exact["gap_error_std"]
    top1, top1_clear = _top1(teacher_forced, ids), _top1(teacher_forced, ids, clear)
    kl = tool.coarse_kl(ids, lp, reference["exact_other_logprob"], teacher_forced)
    print(f"\nvs exact float64: top-1 agreement {top1:.4f}, off near-ties ({int(clear.sum())} "
          f"positions) {top1_clear:.4f}, KL(exact||smallmind) mean {kl.mean():.5f} "
          f"max {kl.max():.5f}")
    assert kl.mean() < MAX_MEAN_KL
    assert top1_clear >= MIN_TOP1


def test_greedy_ids_match_llama_cpp(smollm2, reference):
    expected = reference["greedy_ids"].tolist()
    # Near-tie here is the brief's 0.01 nats. The stored reference has none in its 32 steps
    # (smallest top-2 gap 0.18 nats, at step 19; 0.19 at step 14), so all 16 tokens are
    # compared. Steps 14 and 19 are inside llama.cpp's measured rounding noise (2 * 0.114
    # nats, see test_teacher_forced_logits_match_llama_cpp): a flip there would be rounding,
    # not a bug. smallmind matched all 32 tokens when this was written.
    n = min(GREEDY_COMPARED, first_near_tie(reference["greedy_top2_gap"]))
    assert n >= 8, "the reference has a near-tie too early to be a useful check"
    result = smollm2.generate(reference["greedy_prompt_ids"].tolist(), max_new_tokens=n,
                              temperature=0.0, seed=0)
    print(f"\nfirst {n} greedy ids: smallmind {result.tokens} llama.cpp {expected[:n]}")
    assert result.tokens == expected[:n]


# -- stories260K: llama.cpp live, on a GGUF converted from the llama2.c checkpoint ------------
def test_stories260k_greedy_matches_llama_cpp(tmp_path):
    pytest.importorskip("llama_cpp")
    converter = REPO / "tools" / "llama2c_to_gguf.py"
    checkpoint = shared_model("stories260K/stories260K.bin")
    tokenizer = shared_model("stories260K/tok512.bin")
    gguf = tmp_path / "stories260K.gguf"
    subprocess.run([sys.executable, str(converter), str(checkpoint), str(gguf),
                    "--tokenizer", str(tokenizer)], check=True, capture_output=True)

    steps = 56  # run.c's 60 positions minus the 4 prompt tokens
    llm = tool.open_llama(gguf, logits_all=True, n_ctx=512, n_threads=1, seed=0)
    prompt = llm.tokenize(b"Zoo", add_bos=tool._add_bos(llm), special=False)
    llama_ids, gaps = tool.greedy(llm, prompt, steps)
    llama_text = llm.detokenize(llama_ids).decode("utf-8")
    # The converted file reproduces llama2.c's own greedy output (stored with the model).
    run_c = (checkpoint.parent / "expected_greedy_prompt_Zoo_60steps.txt").read_text()
    assert run_c.startswith("Zoo" + llama_text), llama_text

    from smallmind import Engine
    engine = Engine.load(gguf, n_threads=1)
    n = first_near_tie(gaps)
    result = engine.generate("Zoo", max_new_tokens=n, temperature=0.0, seed=0)
    assert result.prompt_tokens == prompt
    assert result.tokens == llama_ids[:n], f"near-tie free prefix of {n} tokens differs"
