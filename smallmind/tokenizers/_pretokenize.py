"""Pre-tokenizers of byte-level BPE models: the regex pipelines llama.cpp names by
``tokenizer.ggml.pre``, written for the stdlib ``re``.

llama.cpp runs a list of regexes in turn; each one cuts every current piece into its
matches *and* the text between them, so an early regex (such as "one digit") fences in
what later ones can join. Its hand-written scanners for the GPT-2 and Llama 3 patterns
behave exactly like the regexes below with llama.cpp's own character classes, which
``_unicode`` spells out (``re``'s ``\\s`` and ``\\w`` differ from them). The regexes run on
a copy of the text where every non-ASCII character stands in for its class, and the
pieces are cut from the real text by length.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ..errors import UnsupportedModelError
from ._unicode import CLASSES, collapse

# Patterns with {L} {N} {P} {WS} standing for the class bodies.
_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = (_CONTRACTIONS + r"| ?[{L}]+| ?[{N}]+| ?[^{WS}{L}{N}]+|[{WS}]+(?![^{WS}])|[{WS}]+")
_LLAMA3 = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}"
           r"| ?[^{WS}{L}{N}]+[\r\n]*|[{WS}]*[\r\n]+|[{WS}]+(?![^{WS}])|[{WS}]+")
_QWEN2 = (_CONTRACTIONS_ANY_CASE + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]"
          r"| ?[^{WS}{L}{N}]+[\r\n]*|[{WS}]*[\r\n]+|[{WS}]+(?![^{WS}])|[{WS}]+")
_PUNCT_RUN = r"[{P}\$\+<=>\^~\|]+"

#: Pipelines: (regex, covers_everything). A covering regex matches every character, so
#: ``findall`` gives the pieces; the others also keep the text between matches.
_PIPELINES: dict[str, tuple[tuple[str, bool], ...]] = {
    "gpt2": ((_GPT2, True),),
    "default": ((_PUNCT_RUN, False), (_GPT2, True), (r"[{N}]+", False), (r"[0-9][0-9][0-9]", False)),
    "smollm": ((r"[{N}]", False), (_GPT2, True)),
    "llama3": ((_LLAMA3, True),),
    "qwen2": ((_QWEN2, True),),
}

#: ``tokenizer.ggml.pre`` names -> (pipeline, merges ignored for whole-word tokens,
#: BOS added by default). From llama.cpp's llama-vocab.cpp.
_NAMES: dict[str, tuple[str, bool, bool]] = {
    "default": ("default", False, False),
    "": ("default", False, False),
    **{name: ("gpt2", False, False) for name in (
        "gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
        "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion",
        "granite-docling", "jina-v1-en", "jina-v2-code", "roberta-bpe")},
    **{name: ("smollm", False, False) for name in (
        "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
        "mellum2")},
    **{name: ("llama3", True, True) for name in (
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
        "lfm2", "jina-v5-nano")},
    **{name: ("llama3", False, False) for name in ("dbrx", "smaug-bpe")},
    **{name: ("qwen2", False, False) for name in (
        "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan",
        "solar-open")},
}


@dataclass(frozen=True)
class PreTokenizer:
    """Cuts text into the words that BPE merges within."""
    name: str
    steps: tuple[tuple[re.Pattern[str], bool], ...]
    ignore_merges: bool
    add_bos: bool

    def split(self, text: str) -> list[str]:
        collapsed = collapse(text)
        pieces = [collapsed]
        for regex, covering in self.steps:
            if covering:
                if len(pieces) == 1:
                    pieces = regex.findall(pieces[0])
                else:
                    findall = regex.findall
                    pieces = [w for piece in pieces for w in findall(piece)]
            else:
                split = regex.split
                pieces = [w for piece in pieces for w in split(piece) if w]
        if collapsed is text:
            return pieces
        words = []
        start = 0
        for piece in pieces:
            end = start + len(piece)
            words.append(text[start:end])
            start = end
        return words


def supported_names() -> list[str]:
    return sorted(n for n in _NAMES if n)


@cache
def _compiled(pipeline: str) -> tuple[tuple[re.Pattern[str], bool], ...]:
    steps = []
    for pattern, covering in _PIPELINES[pipeline]:
        source = pattern.format(**CLASSES)
        # The non-covering steps keep their matches through ``re.split``'s capture group.
        steps.append((re.compile(source if covering else f"({source})"), covering))
    return tuple(steps)


def pre_tokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre == name``."""
    try:
        pipeline, ignore_merges, add_bos = _NAMES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"BPE pre-tokenizer {name!r} is not supported (supported: "
            f"{', '.join(supported_names())})", key="tokenizer.ggml.pre") from None
    return PreTokenizer(name or "default", _compiled(pipeline), ignore_merges, add_bos)
