"""Write the llama.cpp reference fixture that ``tests/test_gemma3.py`` checks smallmind against.

Needs llama-cpp-python and gguf (fixture tools only, never smallmind dependencies)::

    python tools/make_gemma3_fixture.py     # -> tests/fixtures/gemma3_270m_q4_k_m_reference.npz

The model is Gemma 3 270M, ``gemma-3-270m-q4_k_m.gguf`` (F32 norms, Q5_0 / Q4_K / Q8_0 / Q6_K
matrices), run by llama.cpp with the settings of ``tools/make_logit_fixtures.py`` (whose
helpers this reuses: ``open_llama`` without the extra buffer types, ``logits_all=True``,
``n_ctx=1024``, 2 threads, seed 0; llama.cpp's default fp16 KV cache).

What is recorded, all in the top-K layout of ``make_logit_fixtures.py`` (K = 32 most likely
ids per position, their float64 log-probabilities, the log of the mass outside them and the
logsumexp):

* ``tf_*``: teacher forcing over ``tokens`` = BOS + the first 639 tokens of ``text``
  (``tests/fixtures/smollm2_reference_text.txt`` when this was written). Only the last
  ``TF_KEEP`` = 128 positions (512..639) are stored: there the local layers' 512-token
  sliding window is cutting off the start of the text, so the stored rows also check the
  window, while the file stays small.
  ``tf_exact_*`` are the same rows for a float64 NumPy forward pass of the gguf-dequantised
  weights (``smallmind/reference.py: gemma3_logits``), and ``meta["exact_vs_llama_cpp"]`` scores
  llama.cpp against it: how far llama.cpp's own rounding moves it from exact arithmetic.
* ``chat_*``: teacher forcing over a Gemma chat prompt (special tokens parsed), every
  position stored.
* ``greedy_<name>_*``: llama.cpp's greedy continuations (EOS not special) of ``PROMPTS`` and
  each step's top-2 log-probability gap, for spotting near-ties.

``--f32-check`` (no fixture written) checks the float64 reference itself against llama.cpp
without rounding in the way: it writes an F32 copy of the GGUF (weights dequantised by gguf,
~1.1 GB in a temporary folder), runs llama.cpp on it with an F32 KV cache over the first 700
tokens of the text, and prints KL(llama.cpp || smallmind's F32 model) before and after the
512-token window starts cutting, for the configured window and for 511, 513 and none.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

import make_logit_fixtures as base  # noqa: E402  (the shared fixture helpers)

DEFAULT_MODEL = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind")) \
    / "gemma-3-270m-q4_k_m.gguf"
DEFAULT_TEXT = REPO / "tests" / "fixtures" / "smollm2_reference_text.txt"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "gemma3_270m_q4_k_m_reference.npz"
TF_TOKENS = 640
TF_KEEP = 128
CHAT_PROMPT = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
PROMPTS = {"qa": ("Q: What is the capital of France?\nA:", 24),
           "france": ("The capital of France is", 24), "chat": (CHAT_PROMPT, 24)}


def dequantised_tensors(model: Path) -> tuple[object, dict]:
    """smallmind's config of ``model`` and its tensors dequantised to float32 by the gguf
    package (llama.cpp's reference dequantisers), as ``{name: (data, shape)}`` namespaces."""
    import gguf

    from smallmind.formats.gguf import config_from_gguf, read_gguf

    reader = gguf.GGUFReader(str(model))
    ours = read_gguf(model)
    config = config_from_gguf(ours.metadata, ours.tensors, path=model)
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        tensors[t.name] = types.SimpleNamespace(data=data, shape=shape)
    return config, tensors


def top_k_layout(logits: np.ndarray, prefix: str) -> dict:
    """The fixture's top-K arrays for rows of raw logits."""
    logprobs, lse = base.log_softmax64(logits)
    ids = base.top_k_rows(logprobs, base.TOP_K)
    return {
        prefix + "topk_ids": ids.astype(np.int32),
        prefix + "topk_logprobs": np.take_along_axis(logprobs, ids, axis=-1).astype(np.float32),
        prefix + "other_logprob": base.outside_logprob(np.asarray(logits, np.float64), lse,
                                                       ids).astype(np.float32),
        prefix + "logsumexp": lse.astype(np.float32),
    }


def build(model: Path, text: str, n_threads: int) -> dict:
    import llama_cpp

    from smallmind.reference import gemma3_logits

    llm = base.open_llama(model, logits_all=True, n_ctx=base.N_CTX, n_threads=n_threads, seed=0)
    add_bos = base._add_bos(llm)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)[:TF_TOKENS]
    if len(tokens) < TF_TOKENS:
        raise SystemExit(f"the reference text has only {len(tokens)} tokens, {TF_TOKENS} needed")
    start = TF_TOKENS - TF_KEEP
    logits = base.teacher_forced_logits(llm, tokens)[start:]
    out = {"text": np.array(text), "tokens": np.asarray(tokens, dtype=np.int32),
           "tf_start": np.array(start)}
    out.update(top_k_layout(logits, "tf_"))

    chat_ids = llm.tokenize(CHAT_PROMPT.encode("utf-8"), add_bos=add_bos, special=True)
    out["chat_tokens"] = np.asarray(chat_ids, dtype=np.int32)
    out.update(top_k_layout(base.teacher_forced_logits(llm, chat_ids), "chat_"))

    for name, (prompt, n) in PROMPTS.items():
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        g_ids, g_gaps = base.greedy(llm, ids, n)
        out[f"greedy_{name}_prompt"] = np.array(prompt)
        out[f"greedy_{name}_prompt_ids"] = np.asarray(ids, dtype=np.int32)
        out[f"greedy_{name}_ids"] = np.asarray(g_ids, dtype=np.int32)
        out[f"greedy_{name}_text"] = np.array(llm.detokenize(g_ids).decode("utf-8", "replace"))
        out[f"greedy_{name}_top2_gap"] = np.asarray(g_gaps, dtype=np.float32)

    config, tensors = dequantised_tensors(model)
    exact = gemma3_logits(config, tensors, tokens)[start:]
    out.update(top_k_layout(exact, "tf_exact_"))
    ids, lp = out["tf_topk_ids"], out["tf_topk_logprobs"]
    exact_kl = base.coarse_kl(ids, lp, out["tf_other_logprob"], exact)
    gap_std = base.gap_error_std(ids, lp, exact)
    agree = exact.argmax(axis=-1) == ids[:, 0]
    clear = (lp[:, 0] - lp[:, 1]) >= 2 * gap_std
    meta = {
        "tool": "tools/make_gemma3_fixture.py",
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "model_file": model.name,
        "model_sha256": base.sha256_of(model),
        "n_threads": n_threads, "n_ctx": base.N_CTX, "seed": 0, "logits_all": True,
        "use_extra_bufts": False, "add_bos": add_bos, "top_k": base.TOP_K,
        "tf_positions": f"{start}..{TF_TOKENS - 1} of {TF_TOKENS}",
        "kl_method": base.KL_METHOD,
        "exact_vs_llama_cpp": {
            "top1_agreement": float(agree.mean()),
            "kl_mean": float(exact_kl.mean()),
            "kl_max": float(exact_kl.max()),
            "gap_error_std": gap_std,
            "clear_positions": int(clear.sum()),
            "top1_agreement_clear": float(agree[clear].mean()),
            "note": "float64 NumPy forward (smallmind/reference.py gemma3_logits) of the "
                    "gguf-dequantised weights vs llama.cpp on the tf_ rows; 'clear' = "
                    "reference top-2 gap >= 2 * gap_error_std",
        },
    }
    out["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return out


def write_f32_copy(model: Path, out: Path) -> None:
    """``model`` with every tensor dequantised to F32 (metadata unchanged but the file type)."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    writer = gguf.GGUFWriter(str(out), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = 0 if field.name == "general.file_type" else field.contents()  # 0: all F32
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def f32_check(model: Path, text: str, n_threads: int, n_tokens: int = 700) -> None:
    import dataclasses
    import tempfile

    from smallmind.formats.gguf import load_gguf
    from smallmind.models.llama import Llama

    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        write_f32_copy(model, f32)
        llm = base.open_llama(f32, logits_all=True, n_ctx=base.N_CTX, n_threads=n_threads,
                              seed=0, type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=base._add_bos(llm),
                              special=False)[:n_tokens]
        ref = base.teacher_forced_logits(llm, tokens)
        loaded = load_gguf(f32, n_ctx=base.N_CTX)
        window = loaded.config.sliding_window
        for w in (window, window - 1, window + 1, 0):
            config = dataclasses.replace(loaded.config, sliding_window=w)
            model_ = Llama(config, loaded.tensors)
            state = model_.new_state(n_threads=n_threads)
            logits = np.empty((len(tokens), config.vocab_size), dtype=np.float32)
            model_.forward(state, tokens, all_logits=logits)
            state.close()
            p, _ = base.log_softmax64(ref)
            q, _ = base.log_softmax64(logits)
            kl = (np.exp(p) * (p - q)).sum(axis=-1)
            print(f"F32 weights, F32 KV, {len(tokens)} tokens, smallmind window {w}: "
                  f"KL(llama.cpp||smallmind) mean over positions < {window} {kl[:window].mean():.3g}, "
                  f">= {window} {kl[window:].mean():.3g}; max |logit diff| "
                  f"{np.abs(ref - logits).max():.3g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=base.N_THREADS)
    ap.add_argument("--f32-check", action="store_true",
                    help="check the reference against llama.cpp on F32 weights; no fixture")
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"model {args.model} not found (python tools/fetch_models.py)", file=sys.stderr)
        return 1
    if args.f32_check:
        text = args.text.read_text(encoding="utf-8")
        f32_check(args.model, text + "\n\n" + text, args.threads)
        return 0
    fixture = build(args.model, args.text.read_text(encoding="utf-8"), args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    meta = json.loads(str(fixture["meta"]))
    ev = meta["exact_vs_llama_cpp"]
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    print(f"exact float64 vs llama.cpp on positions {meta['tf_positions']}: top-1 "
          f"{ev['top1_agreement']:.4f} (clear {ev['clear_positions']}: "
          f"{ev['top1_agreement_clear']:.4f}), coarse KL mean {ev['kl_mean']:.5f} max "
          f"{ev['kl_max']:.5f}, top-2 gap error std {ev['gap_error_std']:.4f}")
    for name in PROMPTS:
        print(f"greedy {str(fixture[f'greedy_{name}_prompt'])!r} -> "
              f"{str(fixture[f'greedy_{name}_text'])!r}")
        print(f"  ids {fixture[f'greedy_{name}_ids'].tolist()}")
        print(f"  top-2 gaps {np.round(fixture[f'greedy_{name}_top2_gap'], 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
