"""Record llama.cpp's token ids for a few hundred varied strings, as test fixtures.

    python tools/make_tokenizer_fixtures.py            # writes tests/fixtures/tokenizer_*.json
    python tools/make_tokenizer_fixtures.py --scan     # also compares every code point live

Needs ``llama-cpp-python`` (the oracle) and ``gguf`` (to write vocabulary-only copies of
SmolLM2's vocabulary under other pre-tokenizer names); smallmind itself needs neither.
For each model it stores ``Llama(path, vocab_only=True).tokenize(text, add_bos, special)``
for every string (``special=False``, ``add_bos=False``), plus subsets with
``special=True`` and with ``add_bos=True``, the end-of-generation ids and the token
attributes llama.cpp settled on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
CACHE = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))

SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"
#: SmolLM2's vocabulary re-labelled with these pre-tokenizers (llama.cpp names).
PRE_VARIANTS = ("gpt-2", "default", "llama-bpe", "qwen2")
#: Llama 2's 32000-piece SentencePiece vocabulary in llama2.c form (spaces for "▁").
LLAMA2_BIN = REPO.parent / "shared" / "models" / "llama2-tokenizer-32k" / "tokenizer.bin"


# ---------------------------------------------------------------------- strings

HANDWRITTEN = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\tx", "a\tb", "a \t b",
    "Hello world", " Hello world", "Hello world ", "  Hello  world  ", "Hello\nworld",
    "Hello\n\nworld\n", "Hello,\tworld!\r\n", "hello    world", "trailing spaces   ",
    "   leading spaces", "x" * 40, "ab" * 30, "The quick brown fox jumps over the lazy dog.",
    "I'm here, you're there; it's theirs. We'll see, they'd know, I've been.",
    "DON'T SHOUT, IT'S RUDE. WE'LL SEE. I'M. YOU'RE. THEY'VE. HE'D.", "'s 't 're 've 'm 'll 'd",
    "rock'n'roll", "l'homme d'état", "’s curly quotes “like this” ‘and this’",
    "café", "cafe\u0301", "naïve façade coöperate", "Ångström ÅÄÖ åäö ß ẞ", "Crème brûlée",
    "Ελληνικά γράμματα", "Русский текст, ёжик.", "עברית", "العربية مرحبا", "हिन्दी भाषा",
    "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Հայերեն", "ᚠᚢᚦᚨᚱᚲ",
    "你好，世界！", "我爱自然语言处理。", "日本語のテキストです。", "カタカナとひらがな", "한국어 텍스트",
    "中文English混合text", "全角ＡＢＣ１２３！", "半角ｶﾀｶﾅ",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "❤️", "🧑🏿‍💻 codes", "emoji😀inside", "✨ sparkle ✨",
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159265358979", "1,000,000",
    "-273.15", "1e-10", "0x1F600", "2024-01-31", "12:30:45", "+1 (555) 123-4567", "v1.2.3",
    "99 bottles", "a1b2c3", "x²+y³", "½ ¼ ¾", "Ⅻ Ⅳ", "٣٤٥ ١٢", "१२३", "๑๒๓",
    "$100", "€50", "£3.50", "¥1000", "100%", "a^b", "x~y", "a|b", "<=>", "==", "!=", "->", "=>",
    "!!!", "???", "...", "…", "—", "--", "***", "###", "@@@", "&&", "||", "{}", "[]", "()",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    '{"key": "value", "n": [1, 2, 3]}', "SELECT * FROM users WHERE id = 42;",
    "<div class=\"x\">text</div>", "#include <stdio.h>", "x = y if z else w  # comment",
    "https://example.com/path?q=1&r=2#frag", "http://localhost:8080/", "user@example.org",
    "C:\\Users\\name\\file.txt", "/usr/local/bin/python3", "snake_case camelCase PascalCase",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<|im_start|>system\nYou are helpful.<|im_end|>", "text<|im_end|>more",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>", "<eos>", "<pad>",
    "<unk>", "<mask>", "<s>", "</s>", "<s>hello</s>", "<b>bold</b> and <i>italic</i>",
    "<table><tr><td>1</td></tr></table>", "[multimodal]", "<start_of_image>", "<unused0>",
    "<repo_name>", "<reponame>", "<file_sep>", "<filename>a.py", "<jupyter_code>print(1)",
    "<|im_start|><|im_start|>", "< |im_start| >", "<|im_start", "im_start|>",
    "\u00a0nbsp\u00a0", "ideographic\u3000space", "line\u2028sep", "para\u2029sep", "nel\u0085x",
    "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen", "ctrl\x01\x02\x1f", "nul\x00byte",
    "fs\x1cgs\x1drs\x1eus\x1f", "bell\x07", "del\x7f", "vt\x0bff\x0c", "\U0001f600\U0001f601",
    "∑∫√∞≠≤≥", "αβγ δεζ", "ℕℤℚℝℂ", "♠♣♥♦", "→←↑↓", "©®™", "°C °F", "µs ms",
    "\u0301\u0301\u0301", "e\u0301\u0302\u0303", "Z\u0351\u0352\u0353algo", "\U00010000\U0010fffd",
    "\ue000private", "\uffff\ufffe", "\U000e0041tag",
    "ALL CAPS TEXT", "MiXeD cAsE", "a.b.c", "a,b,c", "a;b;c", "one-two-three", "under_score",
    "tab\tseparated\tvalues", "multiple\n\n\nnewlines", "mixed \t\n whitespace", " \t \n ",
    "end with newline\n", "\nstart with newline", "   \n   ", "\n \n \n", "a  \n  b",
]


def _random_strings(rng: random.Random, count: int) -> list[str]:
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", "   \t\n\r", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñßøåæœ", "αβγδεζηθλμπσφψω", "абвгдежзийклмн", "你好世界中文字",
        "日本語かなカナ", "한국어", "😀👍🏽🎉🔥❤️\u200d", "١٢٣४५६", "\u00a0\u3000\u2028\u0085",
        "'s'll're've'd'm't",
    ]
    out = []
    for _ in range(count):
        length = rng.randint(1, 40)
        chars = []
        while len(chars) < length:
            pool = rng.choice(pools)
            run = rng.randint(1, 6)
            chars.extend(rng.choice(pool) for _ in range(run))
        out.append("".join(chars[:length]))
    return out


def _shakespeare_lines(count: int) -> list[str]:
    path = REPO.parent / "shared" / "models" / "tinyshakespeare" / "input.txt"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    step = max(1, len(blocks) // count)
    return [blocks[i] + "\n" for i in range(0, len(blocks), step)][:count]


def build_strings() -> list[str]:
    rng = random.Random(1234)
    strings = HANDWRITTEN + _random_strings(rng, 160) + _shakespeare_lines(20)
    seen: set[str] = set()
    unique = []
    for s in strings:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


# ---------------------------------------------------------------------- llama.cpp

def _llama(path: Path):
    from llama_cpp import Llama
    return Llama(str(path), vocab_only=True, verbose=False)


def _vocab_facts(llm) -> dict:
    import llama_cpp
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    # Attribute runs [start, count, attr] for every token that is not plain NORMAL (4).
    runs: list[list[int]] = []
    for i in range(n):
        attr = int(llama_cpp.llama_vocab_get_attr(vocab, i))
        if attr == 4:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i and runs[-1][2] == attr:
            runs[-1][1] += 1
        else:
            runs.append([i, 1, attr])
    return {"vocab_size": n, "eog_ids": eog, "attr_runs": runs,
            "bos_id": llama_cpp.llama_vocab_bos(vocab), "eos_id": llama_cpp.llama_vocab_eos(vocab),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab))}


def record(llm, strings: list[str]) -> list[dict]:
    cases = []
    for s in strings:
        raw = s.encode("utf-8")
        cases.append({"text": s, "ids": llm.tokenize(raw, add_bos=False, special=False)})
        if "<" in s or "[" in s:
            cases.append({"text": s, "special": True,
                          "ids": llm.tokenize(raw, add_bos=False, special=True)})
    for s in strings[::7]:
        cases.append({"text": s, "add_bos": True,
                      "ids": llm.tokenize(s.encode("utf-8"), add_bos=True, special=False)})
    return cases


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write(name: str, payload: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    target = FIXTURES / name
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    target.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {target} ({len(text.encode()) // 1024} KiB, {len(payload['cases'])} cases)")


def _vocab_only_copy(source: Path, pre: str, target: Path) -> None:
    """A tensor-less GGUF with ``source``'s metadata and ``tokenizer.ggml.pre = pre``."""
    import gguf
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(target), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama2_vocab(path: Path = LLAMA2_BIN) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of a llama2.c tokenizer.bin in GGUF's spelling:
    ``▁`` for spaces, types as Llama 2's converter gives them (0 unknown, 1-2 control,
    byte tokens, the rest normal)."""
    import struct
    data = path.read_bytes()
    pos, tokens, scores, types = 4, [], [], []
    while pos < len(data):
        score, length = struct.unpack_from("<fi", data, pos)
        piece = data[pos + 8:pos + 8 + length].decode("utf-8")
        pos += 8 + length
        i = len(tokens)
        if i == 1:
            piece = "<s>"
        elif i == 2:
            piece = "</s>"
        is_byte = len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
        tokens.append(piece if is_byte else piece.replace(" ", "\u2581"))
        scores.append(score)
        types.append(2 if i == 0 else 3 if i in (1, 2) else 6 if is_byte else 1)
    return tokens, scores, types


def _llama2_gguf(target: Path) -> None:
    """A tensor-less GGUF: SmolLM2's model metadata with Llama 2's SPM vocabulary."""
    import gguf
    reader = gguf.GGUFReader(str(CACHE / SMOLLM))
    writer = gguf.GGUFWriter(str(target), "llama")
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "tokenizer.")) or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    tokens, scores, types = llama2_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_PROBES = ("a{c}b", " {c}{c}1", "1{c} x", "{c}  y", "'{c}s", "{c}\n")


def unicode_scan(llm, tokenizer, stop: int = 0x110000) -> list[int]:
    """Code points where our ids differ from llama.cpp's in a few probe contexts.

    Each block of 128 code points is tried as one string first; only a block that
    differs is probed one code point at a time."""
    def same(text: str) -> bool:
        return tokenizer.encode(text, add_special=False) == \
            llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    bad = []
    for start in range(0, stop, 128):
        cps = [c for c in range(start, min(start + 128, stop)) if not 0xD800 <= c < 0xE000]
        if not cps:
            continue
        block = "".join(p.format(c=chr(c)) for c in cps for p in _PROBES)
        if same(block):
            continue
        bad.extend(c for c in cps if not all(same(p.format(c=chr(c))) for p in _PROBES))
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", action="store_true",
                        help="compare every code point against llama.cpp (slow, prints only)")
    args = parser.parse_args(argv)
    import llama_cpp
    strings = build_strings()
    meta = {"llama_cpp_python": llama_cpp.__version__, "strings": len(strings)}
    for name, fixture in ((SMOLLM, "tokenizer_smollm2.json"), (GEMMA, "tokenizer_gemma3.json")):
        path = CACHE / name
        llm = _llama(path)
        _write(fixture, {**meta, "model": name, "model_sha256": _sha256(path),
                         **_vocab_facts(llm), "cases": record(llm, strings)})
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_VARIANTS:
            copy = Path(tmp) / f"smollm2-{pre}.gguf"
            _vocab_only_copy(CACHE / SMOLLM, pre, copy)
            llm = _llama(copy)
            cases = [c for c in record(llm, strings) if not c.get("special") and not c.get("add_bos")]
            _write(f"tokenizer_smollm2_pre_{pre}.json",
                   {**meta, "model": SMOLLM, "pre": pre, **_vocab_facts(llm) | {"attr_runs": None},
                    "cases": cases})
        if LLAMA2_BIN.exists():
            copy = Path(tmp) / "llama2-spm.gguf"
            _llama2_gguf(copy)
            llm = _llama(copy)
            _write("tokenizer_llama2_spm.json",
                   {**meta, "model": "llama2-tokenizer-32k/tokenizer.bin", **_vocab_facts(llm),
                    "cases": record(llm, strings)})
    if args.scan:
        sys.path.insert(0, str(REPO))
        from smallmind.formats.gguf import read_gguf
        from smallmind.tokenizers import from_gguf_metadata
        for name in (SMOLLM, GEMMA):
            tok = from_gguf_metadata(read_gguf(CACHE / name).metadata)
            bad = unicode_scan(_llama(CACHE / name), tok)
            print(f"{name}: {len(bad)} code points differ", [hex(c) for c in bad[:50]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
