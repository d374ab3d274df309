"""Tokenizers whose ids equal llama.cpp's (GGUF vocabularies) and llama2.c's run.c.

* :class:`SentencePieceTokenizer`: GGUF ``tokenizer.ggml.model = "llama"`` (Llama 2, Gemma).
* :class:`BPETokenizer`: GGUF ``"gpt2"`` byte-level BPE with llama.cpp's pre-tokenizers.
* :class:`Llama2cTokenizer`: llama2.c ``tokenizer.bin`` with run.c's encoder.
* :func:`from_gguf_metadata`: the right one of the first two for a GGUF file's metadata.
"""
from .base import Tokenizer
from .bpe import BPETokenizer
from .byte import ByteTokenizer
from .gguf import from_gguf_metadata
from .llama2c import Llama2cTokenizer
from .sentencepiece import SentencePieceTokenizer

__all__ = ["Tokenizer", "ByteTokenizer", "SentencePieceTokenizer", "BPETokenizer",
           "Llama2cTokenizer", "from_gguf_metadata"]
