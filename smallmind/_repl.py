"""``smallmind chat``: a read-answer loop that keeps the KV cache and stays within the context."""
from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, cast

from .chat import chat_stop_strings, encode_chat
from .errors import SmallMindError
from .sampling import DEFAULT_MAX_NEW_TOKENS
from .tokenizers import Tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .results import TokenStream
    from .session import Session


class ChatREPL:
    """Read a message, answer it, keep the KV cache across turns.

    Each turn renders the whole conversation and runs only the tokens past the longest
    prefix already in the session's cache, so earlier turns are never recomputed. When the
    conversation and a reply of ``max_new_tokens`` would not fit the context, the oldest
    turns are forgotten (the system prompt is kept) and the reply is cut at the context's
    end, each said in one line on stderr.

    On a terminal the prompt is ``> `` with line editing and history (readline); from a pipe
    it reads one message per line and writes only the answers.
    """

    def __init__(self, engine: Engine, *, system: str | None = None,
                 sampling: dict[str, Any] | None = None, stdin: IO[str] | None = None,
                 stdout: IO[str] | None = None, stderr: IO[str] | None = None):
        if engine.tokenizer is None:
            raise SmallMindError("chat needs a model with a tokenizer")
        self.engine = engine
        self.tokenizer: Tokenizer = engine.tokenizer
        self.session: Session = engine.session()
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.sampling = dict(sampling or {})
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def run(self) -> int:
        interactive = self.stdin.isatty()
        if interactive:
            try:
                import readline  # noqa: F401  (importing it gives input() editing and history)
            except ImportError:  # pragma: no cover - not on every platform
                pass
            self.stderr.write("smallmind chat: type a message, Ctrl-D to quit\n")
        while True:
            line = self._read(interactive)
            if line is None:
                return 0
            if line.strip():
                self.turn(line)

    def _read(self, interactive: bool) -> str | None:
        """The next message, or None at end of input."""
        if not interactive:
            line = self.stdin.readline()
            return line.rstrip("\n") if line else None
        try:
            return input("> ")
        except EOFError:
            self.stdout.write("\n")  # leave the shell's prompt on a line of its own
            return None

    def turn(self, user_text: str) -> str:
        """Answer one user message, streaming it to stdout; returns the answer."""
        self.messages.append({"role": "user", "content": user_text})
        fitted = self._fit_context()
        if fitted is None:
            return ""
        ids, max_new = fitted
        sampling = dict(self.sampling, max_new_tokens=max_new)
        sampling["stop"] = list(sampling.get("stop") or []) + chat_stop_strings(self.engine.chat_template)
        new_ids = self.session.continue_with(ids)
        answer = []
        stream = cast("TokenStream", self.session.generate(new_ids, stream=True, **sampling))
        for chunk in stream:
            answer.append(chunk.text)
            self.stdout.write(chunk.text)
            self.stdout.flush()
        self.stdout.write("\n")
        result = stream.result
        if result is not None and result.finish_reason == "length" and max_new < self._wanted():
            self._note(f"the reply stopped at the end of the context ({self.session.capacity} tokens)")
        text = "".join(answer).strip()
        self.messages.append({"role": "assistant", "content": text})
        return text

    def _wanted(self) -> int:
        return int(self.sampling.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def _fit_context(self) -> tuple[list[int], int] | None:
        """Token ids of the conversation and the reply length that fit the context.

        Forgets the oldest exchanges until the prompt leaves room for a full reply (or half
        the context, if a full reply could never fit). A message that cannot fit even alone
        is dropped with a note, and None is returned.
        """
        n_ctx = self.session.capacity
        reserve = min(self._wanted(), n_ctx // 2)
        forgotten = 0
        ids = encode_chat(self.messages, self.tokenizer, self.engine.chat_template)
        while len(ids) + reserve > n_ctx and self._forget_oldest_exchange():
            forgotten += 1
            ids = encode_chat(self.messages, self.tokenizer, self.engine.chat_template)
        if forgotten:
            self._note(f"the context holds {n_ctx} tokens: forgot the {forgotten} oldest "
                       f"exchange{'s' if forgotten > 1 else ''}")
        if len(ids) >= n_ctx:
            self.messages.pop()
            self._note(f"the message is {len(ids)} tokens with the chat template, the context is {n_ctx}")
            return None
        return ids, min(self._wanted(), n_ctx - len(ids))

    def _forget_oldest_exchange(self) -> bool:
        """Drop the oldest user message and its answer (never the system prompt or the
        message being answered); False if there is nothing left to drop."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        later_user = [i for i in range(first + 1, len(self.messages)) if self.messages[i]["role"] == "user"]
        if not later_user:
            return False
        del self.messages[first:later_user[0]]
        return True

    def _note(self, text: str) -> None:
        self.stderr.write(f"smallmind: {text}\n")
        self.stderr.flush()
