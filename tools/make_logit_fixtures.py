"""Write the llama.cpp reference fixture that ``tests/test_fidelity.py`` checks smallmind against.

Needs llama-cpp-python (a fixture/benchmark tool only, never a smallmind dependency)::

    python tools/make_logit_fixtures.py               # -> tests/fixtures/smollm2_q4_1_reference.npz
    python tools/make_logit_fixtures.py --self-check  # also re-runs llama.cpp at 1 thread and
                                                      # scores it against the fixture

What is recorded (SmolLM2-135M-Instruct Q4_1, ``Llama(logits_all=True, n_ctx=1024,
n_threads=2, seed=0)``):

* ``text``: the reference text (``tests/fixtures/smollm2_reference_text.txt``: the opening of
  Coriolanus from tinyshakespeare, public domain, then modern prose written for this fixture),
  and ``tokens``: its ids as llama.cpp tokenises it (BOS only if the GGUF's
  ``tokenizer.ggml.add_bos_token`` says so; for this model it says false).
* Teacher forcing: row ``i`` of ``topk_ids`` / ``topk_logprobs`` is llama.cpp's distribution
  over the token *after* ``tokens[i]``: the K=32 most likely ids (descending, ties by id) and
  their log-probabilities, the log-softmax computed in float64 from llama.cpp's full float32
  logits. ``other_logprob[i]`` is log of the probability mass outside those K ids (computed in
  float64 as logsumexp over the remaining logits minus the full logsumexp, so it stays exact
  when that mass is tiny), and ``logsumexp[i]`` is the full logsumexp of the raw logits
  (``topk_logprobs + logsumexp`` gives back llama.cpp's raw top-K logits).
* ``greedy_*``: llama.cpp's greedy (argmax) continuation of "The capital of France is",
  32 tokens with EOS not treated specially, and at each step the gap between the top-2
  log-probabilities (for spotting near-ties).
* ``exact_*``: the same top-K layout for an exact float64 NumPy forward pass of the same
  (gguf-dequantised) weights, and in ``meta["exact_vs_llama_cpp"]`` how far llama.cpp is
  from it: top-1 agreement, mean KL, and the spread of its top-2 gaps (the yardstick the test
  uses for "near-tie"; see :func:`exact_llama_logits`).

llama.cpp runs with ``use_extra_bufts=False`` (no AMX / repacked matmuls, see
:func:`open_llama`): the plain ggml CPU kernels, Q4_1 weights times Q8_1-quantised activations.

KL approximation (also stored in the fixture as ``meta["kl_method"]``): only the top-K of the
reference are stored, so the test computes KL(P || Q) between the *coarsened* distributions
over K+1 outcomes -- the K reference ids, plus one "other" bucket holding all remaining mass
(for P: ``exp(other_logprob)``; for Q: smallmind's mass outside the same K ids). That is an
exact KL of two proper distributions, and by the log-sum inequality (data processing) it is a
lower bound of the full-vocabulary KL(P || Q); it misses only disagreement about how the
"other" mass is spread, which for K=32 is a small part of the total.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT_MODEL = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind")) \
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = FIXTURES / "smollm2_reference_text.txt"
DEFAULT_OUT = FIXTURES / "smollm2_q4_1_reference.npz"
GREEDY_PROMPT = "The capital of France is"
GREEDY_TOKENS = 32
TOP_K = 32
N_CTX = 1024
N_THREADS = 2

KL_METHOD = (
    "KL(llama.cpp || smallmind) per position over K+1 outcomes: the reference's top-K ids "
    "plus one 'other' bucket with the remaining mass of each distribution; a proper KL of the "
    "coarsened distributions and a lower bound of the full-vocabulary KL (log-sum inequality). "
    "Log-probabilities are log-softmax in float64 of each engine's full logits.")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_softmax64(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise float64 log-softmax of ``logits`` (rows, vocab) and the row logsumexps."""
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max(axis=-1, keepdims=True)
    lse = peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))
    return x - lse, lse[..., 0]


def top_k_rows(logprobs: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest entries per row, descending, ties broken by smaller id."""
    rows = logprobs.shape[0]
    ids = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        row = logprobs[r]
        if k < row.shape[0]:
            cand = np.argpartition(-row, k - 1)[:k]
            cand = np.flatnonzero(row >= row[cand].min())  # with every id tied with the k-th
        else:
            cand = np.arange(row.shape[0])
        order = np.lexsort((cand, -row[cand]))
        ids[r] = cand[order][:k]
    return ids


def outside_logprob(logits64: np.ndarray, lse: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log(probability mass outside ``ids``) per row, without 1 - sum(p) cancellation."""
    masked = np.array(logits64, dtype=np.float64)
    np.put_along_axis(masked, ids, -np.inf, axis=-1)
    peak = masked.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)  # ids cover the whole row: no mass left
    with np.errstate(divide="ignore"):
        rest = peak[..., 0] + np.log(np.exp(masked - peak).sum(axis=-1))
    return rest - lse


def open_llama(model: Path, **kwargs):
    """``llama_cpp.Llama(model, **kwargs)`` with llama.cpp's "extra" CPU buffer types off.

    The extra buffer types are the AMX and weight-repacking matmul paths. On this machine
    (a Firecracker VM whose CPU flags list AMX) the AMX path dies with a general protection
    fault in ``ggml_backend_amx_mul_mat`` on the first ``llama_decode``; llama-cpp-python has
    no argument for ``llama_model_params.use_extra_bufts``, so the default params are patched
    for the duration of the constructor. Q4_1 and F32 weights use the plain ggml CPU kernels
    (AVX-512 here) either way except for AMX.
    """
    import llama_cpp.llama_cpp as capi
    from llama_cpp import Llama

    default_params = capi.llama_model_default_params

    def params_without_extra_bufts():
        params = default_params()
        params.use_extra_bufts = False
        return params

    capi.llama_model_default_params = params_without_extra_bufts
    try:
        return Llama(model_path=str(model), verbose=False, **kwargs)
    finally:
        capi.llama_model_default_params = default_params


def _llama(model: Path, n_threads: int):
    return open_llama(model, logits_all=True, n_ctx=N_CTX, n_threads=n_threads, seed=0)


def _add_bos(llm) -> bool:
    return str(llm.metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"


def teacher_forced_logits(llm, tokens: list[int]) -> np.ndarray:
    """llama.cpp's float32 logits for every position of ``tokens`` (one fresh context)."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)


def greedy(llm, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """n argmax tokens (EOS not special) and the top-2 log-probability gap at each step."""
    llm.reset()
    llm.eval(prompt_ids)
    ids, gaps = [], []
    for _ in range(n):
        logprobs, _ = log_softmax64(llm.scores[llm.n_tokens - 1][None, :])
        top2 = top_k_rows(logprobs, 2)[0]
        ids.append(int(top2[0]))
        gaps.append(float(logprobs[0, top2[0]] - logprobs[0, top2[1]]))
        llm.eval([ids[-1]])
    return ids, gaps


def coarse_kl(ref_ids: np.ndarray, ref_logprobs: np.ndarray, ref_other: np.ndarray,
              logits: np.ndarray) -> np.ndarray:
    """Per-position coarsened KL(reference || logits' distribution), see the module docstring."""
    logprobs, lse = log_softmax64(logits)
    q_top = np.take_along_axis(logprobs, ref_ids.astype(np.int64), axis=-1)
    q_other = outside_logprob(np.asarray(logits, dtype=np.float64), lse, ref_ids.astype(np.int64))
    p_top = np.asarray(ref_logprobs, dtype=np.float64)
    p_other = np.asarray(ref_other, dtype=np.float64)
    kl = (np.exp(p_top) * (p_top - q_top)).sum(axis=-1)
    has_other = np.isfinite(p_other)  # p_other = -inf: the top-K hold all of P's mass
    kl[has_other] += np.exp(p_other[has_other]) * (p_other[has_other] - q_other[has_other])
    return kl


def exact_llama_logits(model: Path, tokens: list[int]) -> np.ndarray:
    """Logits of a plain float64 NumPy forward pass of a ``llama``-architecture GGUF.

    The weights are dequantised by the ``gguf`` package (llama.cpp's own reference
    dequantisers) and everything after that is float64: no activation quantisation, no fp16
    KV cache. It measures how far llama.cpp itself is from exact arithmetic on the same
    weights, which is the yardstick for how closely another engine can be expected to match
    it (see ``meta["exact_vs_llama_cpp"]``).
    """
    import gguf

    reader = gguf.GGUFReader(str(model))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise SystemExit(f"the exact reference implements the llama architecture, not {arch}")

    def field(key: str):
        return reader.fields[f"{arch}.{key}"].contents()

    n_head, n_kv = field("attention.head_count"), field("attention.head_count_kv")
    dim, n_layer = field("embedding_length"), field("block_count")
    eps, base = field("attention.layer_norm_rms_epsilon"), field("rope.freq_base")
    head_dim = dim // n_head
    tensors = {t.name: t for t in reader.tensors}

    def weight(name: str) -> np.ndarray:
        t = tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)

    def rms_norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w

    n = len(tokens)
    angles = np.arange(n)[:, None] * base ** (-np.arange(0, head_dim, 2) / head_dim)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rope(x: np.ndarray) -> np.ndarray:  # llama.cpp's "normal" mode: adjacent pairs
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    embedding = weight("token_embd.weight")
    x = embedding[np.asarray(tokens)]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    group = n_head // n_kv
    for layer in range(n_layer):
        p = f"blk.{layer}."
        h = rms_norm(x, weight(p + "attn_norm.weight"))
        q = rope((h @ weight(p + "attn_q.weight").T).reshape(n, n_head, head_dim))
        k = rope((h @ weight(p + "attn_k.weight").T).reshape(n, n_kv, head_dim))
        v = (h @ weight(p + "attn_v.weight").T).reshape(n, n_kv, head_dim)
        out = np.empty((n, n_head, head_dim))
        for head in range(n_head):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(head_dim) + causal
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, head] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, head // group]
        x = x + out.reshape(n, dim) @ weight(p + "attn_output.weight").T
        h = rms_norm(x, weight(p + "ffn_norm.weight"))
        gate, up = h @ weight(p + "ffn_gate.weight").T, h @ weight(p + "ffn_up.weight").T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ weight(p + "ffn_down.weight").T
    head_w = weight("output.weight") if "output.weight" in tensors else embedding
    return rms_norm(x, weight("output_norm.weight")) @ head_w.T


def gap_error_std(ref_ids: np.ndarray, ref_logprobs: np.ndarray, logits: np.ndarray) -> float:
    """Spread of (other engine's top-2 gap - reference's) over the reference's top-2 ids."""
    logprobs, _ = log_softmax64(logits)
    other = np.take_along_axis(logprobs, ref_ids[:, :2].astype(np.int64), axis=-1)
    ref = np.asarray(ref_logprobs[:, :2], dtype=np.float64)
    return float(((other[:, 0] - other[:, 1]) - (ref[:, 0] - ref[:, 1])).std())


def build(model: Path, text: str, n_threads: int) -> dict:
    import llama_cpp
    llm = _llama(model, n_threads)
    add_bos = _add_bos(llm)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    if len(tokens) > N_CTX:
        raise SystemExit(f"the reference text is {len(tokens)} tokens, more than n_ctx={N_CTX}")
    logits = teacher_forced_logits(llm, tokens)
    logprobs, lse = log_softmax64(logits)
    ids = top_k_rows(logprobs, TOP_K)
    top_lp = np.take_along_axis(logprobs, ids, axis=-1)
    other = outside_logprob(logits.astype(np.float64), lse, ids)

    exact = exact_llama_logits(model, tokens)
    exact_lp, exact_lse = log_softmax64(exact)
    exact_ids = top_k_rows(exact_lp, TOP_K)
    exact_kl = coarse_kl(ids, top_lp, other, exact)
    gap = top_lp[:, 0] - top_lp[:, 1]
    gap_std = gap_error_std(ids, top_lp, exact)
    exact_agree = exact.argmax(axis=-1) == ids[:, 0]
    clear = gap >= 2 * gap_std
    exact_vs_llama = {
        "top1_agreement": float(exact_agree.mean()),
        "kl_mean": float(exact_kl.mean()),
        "gap_error_std": gap_std,
        "clear_positions": int(clear.sum()),
        "top1_agreement_clear": float(exact_agree[clear].mean()),
        "note": "float64 NumPy forward of the gguf-dequantised weights vs llama.cpp; 'clear' "
                "= reference top-2 gap >= 2 * gap_error_std",
    }

    prompt_ids = llm.tokenize(GREEDY_PROMPT.encode("utf-8"), add_bos=add_bos, special=False)
    g_ids, g_gaps = greedy(llm, prompt_ids, GREEDY_TOKENS)
    g_text = llm.detokenize(g_ids).decode("utf-8", errors="replace")

    meta = {
        "tool": "tools/make_logit_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "libllama": llama_cpp.llama_version().decode()
        if hasattr(llama_cpp, "llama_version") else "?",
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "model_file": model.name,
        "model_sha256": sha256_of(model),
        "n_threads": n_threads,
        "n_ctx": N_CTX,
        "seed": 0,
        "logits_all": True,
        "use_extra_bufts": False,
        "add_bos": add_bos,
        "top_k": TOP_K,
        "n_positions": len(tokens),
        "kl_method": KL_METHOD,
        "greedy": f"argmax of llama.cpp logits, {GREEDY_TOKENS} tokens, EOS not special",
        "exact_vs_llama_cpp": exact_vs_llama,
    }
    return {
        "text": np.array(text),
        "tokens": np.asarray(tokens, dtype=np.int32),
        "topk_ids": ids.astype(np.int32),
        "topk_logprobs": top_lp.astype(np.float32),
        "other_logprob": other.astype(np.float32),
        "logsumexp": lse.astype(np.float32),
        "exact_topk_ids": exact_ids.astype(np.int32),
        "exact_topk_logprobs": np.take_along_axis(exact_lp, exact_ids, axis=-1).astype(np.float32),
        "exact_other_logprob": outside_logprob(exact, exact_lse, exact_ids).astype(np.float32),
        "greedy_prompt": np.array(GREEDY_PROMPT),
        "greedy_prompt_ids": np.asarray(prompt_ids, dtype=np.int32),
        "greedy_ids": np.asarray(g_ids, dtype=np.int32),
        "greedy_text": np.array(g_text),
        "greedy_top2_gap": np.asarray(g_gaps, dtype=np.float32),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def self_check(model: Path, fixture: dict, n_threads: int) -> None:
    """Re-run llama.cpp with other settings and score it like the test scores smallmind: the
    noise floor of the comparison (different thread counts change float summation order)."""
    llm = _llama(model, n_threads)
    logits = teacher_forced_logits(llm, fixture["tokens"].tolist())
    kl = coarse_kl(fixture["topk_ids"], fixture["topk_logprobs"], fixture["other_logprob"], logits)
    top1 = (logits.argmax(axis=-1) == fixture["topk_ids"][:, 0]).mean()
    print(f"llama.cpp n_threads={n_threads} vs fixture: top-1 agreement {top1:.4f}, "
          f"mean coarse KL {kl.mean():.3g}, max {kl.max():.3g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=N_THREADS)
    ap.add_argument("--self-check", action="store_true",
                    help="also score a 1-thread llama.cpp run against the fixture")
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"model {args.model} not found (python tools/fetch_models.py)", file=sys.stderr)
        return 1
    text = args.text.read_text(encoding="utf-8")
    fixture = build(args.model, text, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    meta = json.loads(str(fixture["meta"]))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): {meta['n_positions']} positions, "
          f"top-{TOP_K}, llama-cpp-python {meta['llama_cpp_python']}")
    ev = meta["exact_vs_llama_cpp"]
    print(f"exact float64 forward vs llama.cpp: top-1 agreement {ev['top1_agreement']:.4f} "
          f"(on {ev['clear_positions']} clear positions {ev['top1_agreement_clear']:.4f}), "
          f"mean coarse KL {ev['kl_mean']:.5f}, top-2 gap error std {ev['gap_error_std']:.4f}")
    print(f"greedy {GREEDY_PROMPT!r} -> {str(fixture['greedy_text'])!r}")
    print(f"greedy ids {fixture['greedy_ids'].tolist()}")
    print(f"top-2 gaps {np.round(fixture['greedy_top2_gap'], 3).tolist()}")
    if args.self_check:
        self_check(args.model, fixture, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
