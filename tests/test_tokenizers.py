"""Tokenizers against llama.cpp's ids, SentencePiece and llama2.c's run.c.

The ``tests/fixtures/tokenizer_*.json`` files hold llama.cpp's own ids for a few hundred
strings (made by ``tools/make_tokenizer_fixtures.py`` with llama-cpp-python); the
internals (merging, special-token splitting, pre-tokenizer regexes) are checked against
plain reference implementations written here.
"""
from __future__ import annotations

import json
import random
import re
import struct
from functools import cache
from pathlib import Path

import pytest
from conftest import cached_model, shared_model
from hypothesis import given
from hypothesis import strategies as st

from smallmind.errors import TokenizerError, UnsupportedModelError
from smallmind.formats.gguf import read_gguf
from smallmind.tokenizers import (
    BPETokenizer,
    Llama2cTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    _merge,
    _pretokenize,
    _unicode_data,
    _vocab,
    from_gguf_metadata,
)
from smallmind.tokenizers.bpe import bytes_to_unicode, merge_by_rank
from smallmind.tokenizers.sentencepiece import merge_by_score, word_splitter

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("tokenizer_*.json"))
LLAMA2_BIN = "llama2-tokenizer-32k/tokenizer.bin"
TOK512 = "stories260K/tok512.bin"


def _load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def llama2_vocab(path: Path) -> tuple[list[str], list[float], list[int]]:
    """A llama2.c tokenizer.bin in GGUF's spelling (as the fixture tool writes it)."""
    data = path.read_bytes()
    pos, tokens, scores, types = 4, [], [], []
    while pos < len(data):
        score, length = struct.unpack_from("<fi", data, pos)
        piece = data[pos + 8:pos + 8 + length].decode("utf-8")
        pos += 8 + length
        i = len(tokens)
        piece = {1: "<s>", 2: "</s>"}.get(i, piece)
        is_byte = re.fullmatch(r"<0x[0-9A-F]{2}>", piece) is not None
        tokens.append(piece if is_byte else piece.replace(" ", "\u2581"))
        scores.append(score)
        types.append(2 if i == 0 else 3 if i in (1, 2) else 6 if is_byte else 1)
    return tokens, scores, types


@cache
def _gguf_metadata(model: str) -> dict:
    return read_gguf(cached_model(model)).metadata


@cache
def tokenizer_for(fixture_name: str) -> Tokenizer:
    fx = _load_fixture(fixture_name)
    if fx["model"].endswith("tokenizer.bin"):
        tokens, scores, types = llama2_vocab(shared_model(LLAMA2_BIN))
        return SentencePieceTokenizer(tokens, scores, types)
    metadata = _gguf_metadata(fx["model"])
    if "pre" in fx:
        metadata = {**metadata, "tokenizer.ggml.pre": fx["pre"]}
    return from_gguf_metadata(metadata)


@cache
def llama2c(relpath: str) -> Llama2cTokenizer:
    return Llama2cTokenizer.from_file(shared_model(relpath))


def plain_strings() -> list[str]:
    """Every fixture string (they are the same in all files)."""
    fx = _load_fixture("tokenizer_llama2_spm.json")
    return [c["text"] for c in fx["cases"] if not c.get("special") and not c.get("add_bos")]


# --------------------------------------------------------------------------------------
# llama.cpp fixtures


def test_fixtures_exist():
    assert {"tokenizer_smollm2.json", "tokenizer_gemma3.json",
            "tokenizer_llama2_spm.json"} <= set(FIXTURE_FILES)
    for name in FIXTURE_FILES:
        assert (FIXTURES / name).stat().st_size < 300_000, name


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_ids_equal_llama_cpp(fixture):
    fx = _load_fixture(fixture)
    tok = tokenizer_for(fixture)
    assert tok.vocab_size == fx["vocab_size"]
    wrong = []
    for case in fx["cases"]:
        ours = tok.encode(case["text"], add_special=case.get("add_bos", False),
                          parse_special=case.get("special", False))
        if ours != case["ids"]:
            wrong.append((case, ours))
    assert not wrong, f"{len(wrong)} of {len(fx['cases'])} differ, first: {wrong[:3]}"


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_decode_inverts_encode(fixture):
    fx = _load_fixture(fixture)
    tok = tokenizer_for(fixture)
    # SmolLM2's vocabulary lacks a few byte tokens (0x04, 0x1D, 0xF5..0xFF...): llama.cpp
    # drops such bytes, and so must we to give its ids.
    unspellable = b""
    if isinstance(tok, BPETokenizer):
        chars = bytes_to_unicode()
        unspellable = bytes(b for b in range(256) if tok.token_to_id(chars[b]) is None)
    for case in fx["cases"]:
        if case.get("special"):
            continue   # control tokens render as nothing by design
        text = case["text"]
        ids = tok.encode(text, add_special=case.get("add_bos", False))
        if unspellable and any(b in unspellable for b in text.encode()):
            kept = bytes(b for b in text.encode() if b not in unspellable)
            assert tok.decode_bytes(ids) == kept
            continue
        assert tok.decode(ids) == text
        # Streaming by bytes gives the same text (the leading space aside).
        joined = b"".join(tok.token_bytes(i) for i in ids)
        assert tok.decode_bytes(ids) in (joined, joined[1:])


@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_special_tokens_match_llama_cpp(fixture):
    fx = _load_fixture(fixture)
    tok = tokenizer_for(fixture)
    assert sorted(tok.stop_ids()) == fx["eog_ids"]
    assert tok.bos_id == fx["bos_id"] and tok.eos_id == fx["eos_id"]
    assert (tok.add_bos, tok.add_eos) == (fx["add_bos"], fx["add_eos"])
    if fx.get("attr_runs") is not None:
        expected = [4] * fx["vocab_size"]          # llama.cpp's NORMAL attribute
        for start, count, attr in fx["attr_runs"]:
            expected[start:start + count] = [attr] * count
        assert list(tok._attrs) == expected
    for token_id in tok.special_ids():
        assert tok.token_bytes(token_id) == b""


@pytest.mark.parametrize("fixture", ["tokenizer_smollm2.json", "tokenizer_gemma3.json",
                                     "tokenizer_llama2_spm.json"])
def test_bad_ids_raise(fixture):
    tok = tokenizer_for(fixture)
    n = tok.vocab_size
    for bad in ([n], [-1], [0, n + 5], [2**40]):
        with pytest.raises(TokenizerError):
            tok.decode(bad)
    for bad in (n, -1):
        with pytest.raises(TokenizerError):
            tok.token_bytes(bad)
    assert tok.decode([]) == ""


def test_chat_markers_are_single_tokens_only_when_parsed():
    tok = tokenizer_for("tokenizer_smollm2.json")
    start = tok.token_to_id("<|im_start|>")
    assert start is not None
    assert tok.encode("<|im_start|>user", parse_special=True)[0] == start
    assert start not in tok.encode("<|im_start|>user")
    assert tok.token_to_id("<|im_end|>") in tok.stop_ids()


def test_encode_rejects_non_text():
    tok = tokenizer_for("tokenizer_smollm2.json")
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError):
        tok.encode("lone \udc80 surrogate")


# --------------------------------------------------------------------------------------
# llama2.c tokenizer.bin and run.c


def test_stories260k_prompt_ids():
    # PROVENANCE.md of stories260K: llama2.c encodes "Zoo" to these ids (BOS first).
    tok = llama2c(TOK512)
    assert tok.vocab_size == 512
    assert tok.encode("Zoo") == [1, 410, 469, 347]
    assert tok.decode([1, 410, 469, 347]) == "Zoo"
    assert tok.encode("") == [1] and tok.encode("", add_special=False) == []
    assert tok.stop_ids() == {1, 2}        # run.c ends a story at the next BOS
    assert tok.special_ids() == {0, 1, 2}


@pytest.mark.parametrize("relpath", [TOK512, LLAMA2_BIN])
def test_llama2c_round_trip(relpath):
    tok = llama2c(relpath)
    for text in plain_strings():
        assert tok.decode(tok.encode(text)) == text, text


def test_llama2c_matches_llama_cpp_spm_on_fixture_strings():
    # Same vocabulary, two algorithms (run.c's and llama.cpp's SPM) that agree on
    # these strings: the llama.cpp fixture is an oracle for run.c's port too.
    tok = llama2c(LLAMA2_BIN)
    fx = _load_fixture("tokenizer_llama2_spm.json")
    for case in fx["cases"]:
        if case.get("special"):
            continue
        assert tok.encode(case["text"], add_special=case.get("add_bos", False)) == case["ids"]


def test_llama2c_matches_sentencepiece():
    spm = pytest.importorskip("sentencepiece", reason="optional oracle for run.c's port")
    model = shared_model("llama2-tokenizer-32k/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tok = llama2c(LLAMA2_BIN)
    shakespeare = shared_model("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    lines = shakespeare.splitlines()[:400]
    for text in plain_strings() + lines:
        assert tok.encode(text, add_special=False) == sp.encode(text), text


def _write_bin(path: Path, pieces: list[bytes], scores: list[float], max_len: int = 8,
               lengths: list[int] | None = None) -> Path:
    out = struct.pack("<i", max_len)
    for i, (piece, score) in enumerate(zip(pieces, scores, strict=False)):
        n = len(piece) if lengths is None else lengths[i]
        out += struct.pack("<fi", score, n) + piece
    path.write_bytes(out)
    return path


def _minimal_pieces() -> list[bytes]:
    return [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]


def test_llama2c_file_errors(tmp_path):
    pieces = _minimal_pieces() + [b" ", b"a", b" a"]
    good = _write_bin(tmp_path / "good.bin", pieces, [0.0] * len(pieces))
    tok = Llama2cTokenizer.from_file(good)
    assert tok.encode("a") == [1, 261]           # " " + "a" merged
    assert tok.encode("\u00e9", add_special=False) == [259, 0xC3 + 3, 0xA9 + 3]
    with pytest.raises(TokenizerError, match="needs 300"):
        Llama2cTokenizer.from_file(good, vocab_size=300)
    raw = good.read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-1])
    with pytest.raises(TokenizerError, match="claims"):
        Llama2cTokenizer.from_file(tmp_path / "cut.bin")
    (tmp_path / "stub.bin").write_bytes(raw[:2])
    with pytest.raises(TokenizerError, match="too short"):
        Llama2cTokenizer.from_file(tmp_path / "stub.bin")
    negative = _write_bin(tmp_path / "neg.bin", pieces, [0.0] * len(pieces),
                          lengths=[len(p) for p in pieces[:-1]] + [-4])
    with pytest.raises(TokenizerError):
        Llama2cTokenizer.from_file(negative)
    small = _write_bin(tmp_path / "small.bin", pieces[:100], [0.0] * 100)
    with pytest.raises(TokenizerError, match="at least"):
        Llama2cTokenizer.from_file(small)
    with pytest.raises(TokenizerError):
        Llama2cTokenizer.from_file(tmp_path / "missing.bin")
    with pytest.raises(TokenizerError):
        tok.decode([len(pieces)])


def test_llama2c_merge_floor_and_ties(tmp_path):
    # Pieces at or below run.c's -1e10 floor never merge; equal scores merge leftmost.
    pieces = _minimal_pieces() + [b" ", b"a", b"b", b"ab", b"ba", b" a"]
    scores = [0.0] * 259 + [0.0, 0.0, 0.0, -1e10, -1.0, -2.0]
    tok = Llama2cTokenizer(pieces, scores)
    ids = {p.decode(): i for i, p in enumerate(pieces)}
    # " aba": " a" (-2) vs "ba" (-1) -> "ba" first; "ab" is below the floor.
    assert tok.encode("aba", add_special=False) == [ids[" a"], ids["ba"]]
    tie = Llama2cTokenizer(pieces, [0.0] * 259 + [0.0, 0.0, 0.0, -1.0, -1.0, -5.0])
    # " abab": "ab" and "ba" tie at -1: leftmost pair ("ab" at 1) wins, then "ab" again.
    assert tie.encode("abab", add_special=False) == [ids[" "], ids["ab"], ids["ab"]]


# --------------------------------------------------------------------------------------
# from_gguf_metadata


def _tiny_bpe_metadata(**extra) -> dict:
    chars = bytes_to_unicode()
    tokens = ["<|endoftext|>"] + chars + ["he", "ll", "hell", "hello"]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
          "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
          "tokenizer.ggml.merges": ["h e", "l l", "he ll", "hell o"],
          "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}
    md.update(extra)
    return md


def test_tiny_bpe_merges_by_rank():
    tok = from_gguf_metadata(_tiny_bpe_metadata())
    assert isinstance(tok, BPETokenizer)
    hello = tok.token_to_id("hello")
    assert tok.encode("hello") == [hello]
    assert tok.decode(tok.encode("hello hello\n")) == "hello hello\n"
    assert tok.encode("<|endoftext|>", parse_special=True) == [0]
    assert tok.stop_ids() == frozenset({0})
    with_bos = from_gguf_metadata(_tiny_bpe_metadata(**{"tokenizer.ggml.add_bos_token": True}))
    assert with_bos.encode("hello") == [0, hello]
    assert with_bos.encode("hello", add_special=False) == [hello]


def test_fim_and_end_of_turn_ids():
    # A repo-name FIM token stops generation; given in the metadata it replaces the
    # auto-detected one, and an EOT id from the file is used as is.
    md = _tiny_bpe_metadata()
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + ["<reponame>", "<|fim_pad|>", "<turn>"]
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [1, 1, 3]
    n = len(md["tokenizer.ggml.tokens"])
    tok = from_gguf_metadata(md)
    assert tok.stop_ids() == {0, n - 3, n - 2}
    assert tok.is_control(n - 3) and tok.token_bytes(n - 3) == b""
    given = from_gguf_metadata({**md, "tokenizer.ggml.fim_rep_token_id": n - 1,
                                "tokenizer.ggml.eot_token_id": n - 1})
    assert given.stop_ids() == {0, n - 2, n - 1}
    assert not given.is_control(n - 3) and given.token_bytes(n - 3) == b"<reponame>"


def test_metadata_errors():
    with pytest.raises(TokenizerError, match="model"):
        from_gguf_metadata({"tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(UnsupportedModelError):
        from_gguf_metadata({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(UnsupportedModelError, match="pre-tokenizer"):
        from_gguf_metadata(_tiny_bpe_metadata(**{"tokenizer.ggml.pre": "no-such-pre"}))
    with pytest.raises(TokenizerError, match="tokens"):
        from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": "abc"})
    with pytest.raises(TokenizerError, match="merges"):
        from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="scores"):
        from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"],
                            "tokenizer.ggml.scores": [0.0]})
    with pytest.raises(TokenizerError, match="duplicate"):
        from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "a"]})
    # add_bos with no BOS in range (the default 11 is outside a 2-token vocabulary).
    with pytest.raises(TokenizerError, match="BOS"):
        from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"],
                            "tokenizer.ggml.merges": [], "tokenizer.ggml.add_bos_token": True})


def test_spm_byte_fallback_and_unknown():
    tokens = ["<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", "\u2581", "a", "\u2581a"]
    types = [2, 3, 3, 6, 6, 1, 1, 1]
    tok = SentencePieceTokenizer(tokens, [0.0] * 8, types)
    assert tok.encode("a\u00e9", add_special=False) == [7, 3, 4]
    assert tok.decode([1, 7, 3, 4]) == "a\u00e9"
    assert tok.encode("a\u00e9") == [1, 7, 3, 4]
    no_bytes = SentencePieceTokenizer(tokens[:3] + tokens[5:], [0.0] * 6, types[:3] + types[5:])
    # "▁éa": no piece joins "▁" and "é", and é's two bytes have no tokens -> <unk> twice.
    assert no_bytes.encode("\u00e9a", add_special=False) == [3, 0, 0, 4]
    assert no_bytes.decode([0]) == ""


# --------------------------------------------------------------------------------------
# token bytes: the vectorised blob against llama.cpp's rule applied token by token

# "▁", GPT-2's stand-ins (Ġ, Ċ, é), a character outside GPT-2's table (U+0080), an escaped
# invalid byte, an astral character and the makings of byte tokens.
piece_chars = "a \u2581\u0120\u010a\u00e9\u0080\udce9\U0001f600<>0xA4Z"


def reference_token_bytes(text: str, attr: int, normal, byte_default) -> bytes:
    if attr & (_vocab.ATTR_CONTROL | _vocab.ATTR_UNKNOWN):
        return b""
    if attr & _vocab.ATTR_USER_DEFINED:
        return text.encode("utf-8", "surrogateescape")
    if attr & _vocab.ATTR_NORMAL:
        return normal(text)
    if attr & _vocab.ATTR_BYTE:
        return _vocab._parse_byte_token(text, byte_default(text))
    return b""


def gpt2_bytes(text: str) -> bytes:
    to_byte = {ch: b for b, ch in enumerate(bytes_to_unicode())}
    return b"".join(bytes([to_byte[ch]]) if ch in to_byte else ch.encode("utf-8", "surrogateescape")
                    for ch in text)


@given(st.lists(st.text(alphabet=piece_chars, max_size=7), min_size=1, max_size=40, unique=True),
       st.lists(st.integers(0, 8), min_size=40, max_size=40), st.booleans())
def test_token_bytes_match_the_rule_token_by_token(pieces, types, bpe):
    types = types[:len(pieces)]
    if bpe:
        tok: Tokenizer = BPETokenizer(pieces, [], types)
        normal, byte_default = gpt2_bytes, lambda text: b""
    else:
        tok = SentencePieceTokenizer(pieces, None, types, bos_id=None, eos_id=None, unk_id=None,
                                     add_bos=False)
        normal = lambda text: text.replace("\u2581", " ").encode("utf-8", "surrogateescape")  # noqa: E731
        byte_default = lambda text: text.encode("utf-8", "surrogateescape")  # noqa: E731
        named = [p if p else f"[EMPTY_{i}]" for i, p in enumerate(pieces)]
        assert tok._splitter.pattern == word_splitter(named, "\u2581").pattern
    expected = [reference_token_bytes(p if p else f"[EMPTY_{i}]", tok._attrs[i], normal, byte_default)
                for i, p in enumerate(pieces)]
    assert [tok.token_bytes(i) for i in range(len(pieces))] == expected
    assert tok.special_ids() == {i for i, b in enumerate(expected) if not b}


# --------------------------------------------------------------------------------------
# merging: the fast paths against the plain heap


words = st.text(alphabet="abcd", min_size=0, max_size=70)


@given(words, st.integers(0, 2**32 - 1))
def test_bpe_short_merge_equals_heap(word, seed):
    rng = random.Random(seed)
    pieces = {a + b for a in "abcd" for b in "abcd"} | {"ab" + "cd", "aa" + "aa", "abc", "dab"}
    ranks = {}
    for rank, piece in enumerate(rng.sample(sorted(pieces), len(pieces))):
        cut = rng.randrange(1, len(piece))
        ranks.setdefault((piece[:cut], piece[cut:]), rank)
    key = lambda a, b: ranks.get((a, b))  # noqa: E731
    if word:
        assert _merge._merge_rescan(list(word), key) == _merge._merge_heap(list(word), key)
        assert merge_by_rank(word, ranks) == _merge._merge_rescan(list(word), key)


@given(words, st.integers(0, 2**32 - 1))
def test_spm_short_merge_equals_heap(word, seed):
    rng = random.Random(seed)
    pieces = ["a", "b", "c", "d", "ab", "ba", "cd", "dd", "abc", "bab", "cdd", "abab", "dcd"]
    score = {p: float(rng.randint(-4, 4)) for p in pieces}     # many ties on purpose
    key = lambda a, b: None if (a + b) not in score else -score[a + b]  # noqa: E731
    if word:
        assert _merge._merge_rescan(list(word), key) == _merge._merge_heap(list(word), key)
        assert merge_by_score(list(word), score) == _merge._merge_rescan(list(word), key)


@given(st.text(alphabet="ab \u2581", max_size=60), st.integers(0, 2**32 - 1))
def test_spm_word_cuts_do_not_change_merges(text, seed):
    # Cutting before "▁" (where no piece spans the cut) must give the whole-text merge.
    rng = random.Random(seed)
    base = ["<unk>", "<s>", "</s>", "a", "b", "\u2581"]
    extra = ["\u2581a", "a\u2581", "ab", "\u2581\u2581", "b\u2581a", "\u2581b", "ba", "a\u2581b"]
    tokens = base + rng.sample(extra, rng.randint(0, len(extra)))
    scores = [0.0, 0.0, 0.0] + [float(rng.randint(-3, 3)) for _ in tokens[3:]]
    tok = SentencePieceTokenizer(tokens, scores, [2, 3, 3] + [1] * (len(tokens) - 3),
                                 add_space_prefix=False, add_bos=False)
    whole = merge_by_score(list(text.replace(" ", "\u2581")), dict(zip(tokens, scores, strict=True)))
    expected = [tok.token_to_id(s) for s in whole]
    assert tok.encode(text) == expected


# --------------------------------------------------------------------------------------
# special-token splitting against a literal port of llama.cpp's fragment loop


def reference_partition(text: str, specials: list[tuple[str, int]]) -> list:
    fragments: list = [(0, len(text))] if text else []
    for piece, token_id in specials:
        out: list = []
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                continue
            start, end = fragment
            while True:
                at = text.find(piece, start, end)
                if at == -1:
                    if end > start:
                        out.append((start, end))
                    break
                if at > start:
                    out.append((start, at))
                out.append(token_id)
                start = at + len(piece)
        fragments = out
    return [text[f[0]:f[1]] if isinstance(f, tuple) else f for f in fragments]


@given(st.text(alphabet="xy<>", max_size=40), st.lists(st.text(alphabet="xy<>", min_size=1,
                                                                max_size=4), max_size=6, unique=True),
       st.booleans())
def test_partition_matches_llama_cpp_loop(text, specials, parse_special):
    tokens = ["<unk>", "<s>", "</s>", "x", "y", "<", ">", "\u2581"]
    tokens += [s for s in specials if s not in tokens]
    types = [2, 3, 3, 1, 1, 1, 1, 1] + [3 if i % 2 else 4 for i in range(len(tokens) - 8)]
    tok = SentencePieceTokenizer(tokens, None, types, add_bos=False)
    order = tok._specials_all if parse_special else tok._specials_plain
    assert tok._partition(text, parse_special) == reference_partition(text, order)


# --------------------------------------------------------------------------------------
# pre-tokenizers: collapsed-text regexes against the same regexes on full Unicode classes


def _full_class(ranges) -> str:
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


@cache
def _full_pipeline(name: str):
    ws = "".join(f"\\U{c:08x}" for c in (9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680,
                                          *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                          0x205F, 0x3000))
    classes = {"L": _full_class(_unicode_data.LETTER), "N": _full_class(_unicode_data.NUMBER),
               "P": _full_class(_unicode_data.PUNCTUATION), "WS": ws}
    pipeline, _, _ = _pretokenize._NAMES[name]
    return [(re.compile("(" + p.format(**classes) + ")"), covering)
            for p, covering in _pretokenize._PIPELINES[pipeline]]


def _reference_split(name: str, text: str) -> list[str]:
    pieces = [text]
    for regex, _ in _full_pipeline(name):
        pieces = [w for piece in pieces for w in regex.split(piece) if w]
    return pieces


unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | \
    st.text(alphabet=" \t\n\r'sS1234567890aZé¹²٣\u00a0\u3000.,!?$+<=>^~|-_", max_size=40)


@pytest.mark.parametrize("name", ["smollm", "gpt-2", "default", "llama-bpe", "qwen2"])
@given(text=unicode_text)
def test_pretokenizer_matches_full_unicode_regexes(name, text):
    pieces = _pretokenize.pre_tokenizer(name).split(text)
    assert "".join(pieces) == text
    assert pieces == _reference_split(name, text)


def test_pretokenizer_digits_and_contractions():
    split = _pretokenize.pre_tokenizer("smollm").split
    assert split("I'll pay 1234 now") == ["I", "'ll", " pay", " ", "1", "2", "3", "4", " now"]
    llama3 = _pretokenize.pre_tokenizer("llama3").split
    assert llama3("I'LL pay 1234567") == ["I", "'LL", " pay", " ", "123", "456", "7"]
    assert llama3("a  \n\n b") == ["a", "  \n\n", " b"]
