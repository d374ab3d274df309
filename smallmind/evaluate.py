"""Model evaluation: bits per byte and perplexity over a text."""
from __future__ import annotations

import math
import sys
import time

import numpy as np


def perplexity(engine, text: str, *, n_ctx: int | None = None, progress: bool = False) -> dict:
    """Cross-entropy of ``text`` under the model.

    The token sequence is cut into consecutive, non-overlapping windows of ``n_ctx`` tokens
    (default: the model's context); inside each window token j (j >= 1) is predicted from
    tokens 0..j-1 of the same window, and each window's first token is not scored. This is
    the definition ``tools/train_default.py`` uses for its validation figure.

    Returns bits_per_byte (total bits / UTF-8 bytes of the scored tokens), perplexity (per
    token), tokens and bytes scored.
    """
    tok = engine.tokenizer
    if tok is None:
        raise ValueError("perplexity needs a model with a tokenizer")
    ids = tok.encode(text, add_special=False)
    n_ctx = min(n_ctx or engine.n_ctx, engine.n_ctx)
    if n_ctx < 2:
        raise ValueError("n_ctx must be at least 2")
    windows = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("the text is too short to score (needs at least 2 tokens)")
    total_nats = 0.0
    n_tokens = 0
    n_bytes = 0
    start = time.perf_counter()
    for k, window in enumerate(windows):
        logits = engine.logits(window).astype(np.float64)
        targets = np.asarray(window[1:])
        rows = logits[:-1]
        m = rows.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))
        total_nats += float((logz - rows[np.arange(len(targets)), targets]).sum())
        n_tokens += len(targets)
        n_bytes += sum(len(tok.token_bytes(int(t))) for t in targets)
        if progress:
            _progress(k + 1, len(windows), start)
    if progress:
        sys.stderr.write("\n")
    return {
        "bits_per_byte": total_nats / math.log(2) / max(n_bytes, 1),
        "perplexity": math.exp(total_nats / n_tokens),
        "nats_per_token": total_nats / n_tokens,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "windows": len(windows),
        "n_ctx": n_ctx,
    }


def _progress(done: int, total: int, start: float) -> None:
    width = 30
    filled = width * done // total
    elapsed = time.perf_counter() - start
    eta = elapsed / done * (total - done)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} windows "
                     f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left")
    sys.stderr.flush()
