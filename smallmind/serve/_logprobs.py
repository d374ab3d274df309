"""Log-probabilities of generated tokens, as the OpenAI API reports them.

OpenAI reports the model's own distribution: the log-softmax of the raw logits of a step,
before logit bias, penalties, temperature or a grammar's mask. So the row must be taken
(or copied) before the sampler and a constraint touch it: :func:`token_logprob` is the one
call a decode step makes per generated token of a request that asked for logprobs::

    entry = token_logprob(raw_logits_row, chosen_token, top_k)   # -> TokenLogprob

The rest of this module turns :class:`TokenLogprob` entries into the two JSON shapes of the
API: chat (``choices[].logprobs.content[]``) and legacy completions (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tokenizers import Tokenizer

__all__ = ["LogprobTexts", "TokenLogprob", "chat_logprobs", "completion_logprobs", "token_logprob"]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the ``k`` most likely tokens of its step
    (``top``: (token id, log-probability), most likely first; ties by lower id)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """``token``'s log-probability under the log-softmax of the raw logits ``row`` (float32,
    shape (vocab,)), with the ``k`` (0-20) most likely tokens. Computed in float64."""
    x = np.asarray(row, dtype=np.float64)
    peak = float(x.max())
    if not np.isfinite(peak):
        raise ValueError("logprobs need finite logits")
    lse = peak + float(np.log(np.exp(x - peak).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, x.shape[0])
        ids = np.argpartition(-x, k - 1)[:k]
        ids = ids[np.lexsort((ids, -x[ids]))]  # most likely first, then the lower id
        top = tuple((int(i), float(x[i]) - lse) for i in ids)
    return TokenLogprob(int(token), float(x[token]) - lse, top)


class LogprobTexts:
    """Token strings and bytes as OpenAI shows them: the token's bytes as UTF-8, with a byte
    that is only part of a character written ``\\xNN``; a control token by its own text."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.special = tokenizer.special_ids()
        self._text_of = getattr(tokenizer, "token_text", None)

    def bytes_of(self, token: int) -> bytes:
        if token in self.special and self._text_of is not None:
            return str(self._text_of(token)).encode()
        return self.tokenizer.token_bytes(token)

    def text_of(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", "backslashreplace")


def chat_logprobs(entries: list[TokenLogprob], texts: LogprobTexts) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or of one stream chunk)."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = texts.bytes_of(token)
        return {"token": raw.decode("utf-8", "backslashreplace"), "logprob": logprob, "bytes": list(raw)}

    content = []
    for e in entries:
        item = one(e.token, e.logprob)
        item["top_logprobs"] = [one(t, lp) for t, lp in e.top]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], texts: LogprobTexts, offset: int = 0) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion; ``text_offset`` counts characters of the
    answer from ``offset`` (the characters before the first of these tokens)."""
    tokens = [texts.text_of(e.token) for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{texts.text_of(t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }
