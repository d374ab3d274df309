from .base import Tokenizer
from .byte import ByteTokenizer

__all__ = ["Tokenizer", "ByteTokenizer"]
