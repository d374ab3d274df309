"""The smallmind command, run in-process."""
from __future__ import annotations

import json

import numpy as np
import pytest

from smallmind import Engine, ModelConfig
from smallmind.cli import main
from smallmind.formats.gguf_writer import gpt2_metadata, write_gguf
from smallmind.models.init import random_tensors


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    config = ModelConfig.seed_small()
    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    tensors = {name: t.data for name, t in random_tensors(config, seed=42).items()}
    write_gguf(path, "gpt2", gpt2_metadata(config), tensors)
    return path


def test_generate_streams_text_and_reports_timings(tiny_gguf, capsys):
    assert main(["generate", "Hi", "-n", "20", "--seed", "1", "--model", str(tiny_gguf)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hi")
    assert "tok/s" in err and "decode 20 tok" in err


def test_generate_is_seeded(tiny_gguf, capsys):
    main(["generate", "Hi", "-n", "30", "--seed", "5", "--model", str(tiny_gguf)])
    a = capsys.readouterr().out
    main(["generate", "Hi", "-n", "30", "--seed", "5", "--model", str(tiny_gguf)])
    assert capsys.readouterr().out == a


def test_gguf_round_trip_gives_identical_logits(tiny_gguf):
    loaded = Engine.load(tiny_gguf)
    fresh = Engine.from_config(ModelConfig.seed_small(), seed=42)
    tokens = list(b"round trip")
    np.testing.assert_array_equal(loaded.logits(tokens), fresh.logits(tokens))


def test_inspect(tiny_gguf, capsys):
    assert main(["inspect", str(tiny_gguf)]) == 0
    out = capsys.readouterr().out
    assert "gpt2" in out and "blk.0.attn_qkv.weight" in out


def test_bad_model_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    assert main(["generate", "x", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.gguf" in err


def test_bench_json(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_cache"]["tok_per_s"] > 0
    assert result["workload"]["params"] == 470_528


def test_bench_kernels_names_each_weight_type(capsys):
    assert main(["bench", "--kernels", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths["active"] in ("avx2", "avx512")
    assert paths["types"]["Q4_1"].startswith(paths["active"]) and "Q6_K" in paths["types"]


def test_profile_prints_table(tiny_gguf, capsys, tmp_path):
    trace = tmp_path / "t.json"
    assert main(["profile", "ab", "-n", "5", "--model", str(tiny_gguf), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "attention" in out
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert any(e.get("name", "").startswith("attention") and e.get("ph") == "X" for e in events)


def test_perplexity(tiny_gguf, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 5)
    assert main(["perplexity", str(text), "--model", str(tiny_gguf), "--json", "-q"]) == 0
    r = json.loads(capsys.readouterr().out)
    # A random model is close to uniform over 256 bytes: about 8 bits per byte.
    assert 7.0 < r["bits_per_byte"] < 9.0
    assert r["bytes"] == r["tokens"]


def test_generate_stops_at_the_context_of_a_learned_position_model(tiny_gguf, capsys):
    # The seed-shaped model holds 64 positions; asking for more generates what fits.
    assert main(["generate", "Hi", "-n", "500", "--seed", "1", "--model", str(tiny_gguf)]) == 0
    out, err = capsys.readouterr()
    assert "generating 62, not 500" in err and "decode 62 tok" in err


def test_generate_slides_past_the_context_of_a_rotary_model(capsys):
    from conftest import shared_model
    model = shared_model("stories260K/stories260K.bin")
    assert main(["generate", "Once", "-n", "700", "--seed", "3", "--model", str(model)]) == 0
    out, err = capsys.readouterr()
    assert "error" not in err and "decode " in err  # slid past 512 positions, or the story ended


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.gguf")]) == 2
    assert "nope.gguf" in capsys.readouterr().err


# -- conventions: help, version, defaults, one-line errors -------------------------------------

def _run(argv, capsys):
    """(exit status, stdout, stderr) of the command, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_version_and_bare_command_show_help(capsys):
    import smallmind
    status, out, _ = _run(["--version"], capsys)
    assert status == 0 and out.strip() == f"smallmind {smallmind.__version__}"
    status, out, _ = _run([], capsys)
    assert status == 0 and out.startswith("usage: smallmind") and "generate" in out and "pull" in out


def test_every_command_and_option_explains_itself(capsys):
    import argparse

    from smallmind.cli import build_parser
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"generate", "chat", "pull", "inspect", "perplexity", "profile", "bench", "serve"}
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
        text = p.format_help()
        for action in p._actions:
            if action.option_strings and action.default is not None and action.default is not False \
                    and action.default != argparse.SUPPRESS:
                assert f"default: {action.default}" in " ".join(text.split()), (name, action.dest)


def test_one_max_new_tokens_default_for_every_command_and_the_api():
    from smallmind.cli import build_parser
    from smallmind.sampling import DEFAULT_MAX_NEW_TOKENS, SamplingParams
    parser = build_parser()
    for argv in (["generate"], ["chat"], ["profile"]):
        assert parser.parse_args(argv).max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert SamplingParams().max_new_tokens == DEFAULT_MAX_NEW_TOKENS


def test_sampling_defaults_come_from_sampling_params():
    import dataclasses

    from smallmind.cli import build_parser
    from smallmind.sampling import SamplingParams
    args = build_parser().parse_args(["generate"])
    offered = [f for f in dataclasses.fields(SamplingParams) if f.name != "logit_bias"]
    assert offered and all(hasattr(args, f.name) for f in offered)  # every plain field is an option
    for f in offered:
        assert getattr(args, f.name) == f.default, f.name


@pytest.mark.parametrize("argv", [
    ["generate", "x", "-n", "-1"],
    ["generate", "x", "-n", "many"],
    ["generate", "x", "--temperature", "-1"],
    ["generate", "x", "--top-p", "2"],
    ["generate", "x", "--seed", "-5"],
    ["generate", "x", "--threads", "0"],
    ["generate", "x", "--tokenizer", "tok.bin"],
    ["generate", "x", "--model", "no/such/model.gguf"],
    ["chat", "--min-p", "1.5"],
    ["profile", "x", "--by", "nothing"],
    ["inspect"],
    ["bogus"],
    ["pull", "not-a-repo-id", "x.gguf"],
])
def test_misuse_is_one_line_exit_2_and_no_output(argv, capsys):
    status, out, err = _run(argv, capsys)
    assert status == 2
    assert out == ""  # raised before the prompt (or anything else) was printed
    assert err.count("\n") == 1 and err.startswith("smallmind: error: "), err
    assert "Traceback" not in err


def test_prompt_longer_than_the_context_is_refused_before_output(tiny_gguf, capsys):
    status, out, err = _run(["generate", "x" * 100, "--model", str(tiny_gguf)], capsys)
    assert (status, out) == (2, "")
    assert "the prompt is 100 tokens, the context is 64" in err


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xff\xfe\x00binary\x80"])
def test_perplexity_of_an_empty_or_binary_file_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    status, out, err = _run(["perplexity", str(path)], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"smallmind: error: {path}: ") and err.count("\n") == 1, err


def test_no_progress_bar_into_a_redirected_stderr(tiny_gguf, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 20)
    assert main(["perplexity", str(text), "--model", str(tiny_gguf)]) == 0
    assert capsys.readouterr().err == ""


def test_chat_template_that_cannot_render_warns_once_and_uses_chatml(tiny_gguf):
    import warnings

    from smallmind.chat import render_chat, render_chatml
    engine = Engine.load(tiny_gguf)
    engine.chat_template = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    msgs = [{"role": "user", "content": "hi"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            assert render_chat(msgs, engine.tokenizer, engine.chat_template) == render_chatml(msgs)
    assert len(caught) == 1 and "cannot be rendered" in str(caught[0].message)


# -- chat: within the context, quiet at end of input ----------------------------------------------

def test_piped_chat_with_the_embedded_model_answers_twice_and_exits_0(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "smallmind", "chat", "--seed", "1"], input="Hi\nWho are you?\n",
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "> " not in out.stdout
    assert out.stdout.count("\n") >= 2  # one line (at least) per reply


def test_chat_forgets_the_oldest_exchanges_to_stay_within_the_context():
    import io

    from smallmind._repl import ChatREPL
    engine = Engine.default()
    lines = "".join(f"Tell me of the king, question {i}.\n" for i in range(6))
    stdout, stderr = io.StringIO(), io.StringIO()
    repl = ChatREPL(engine, sampling={"max_new_tokens": 100, "temperature": 0.8, "seed": 3},
                    stdin=io.StringIO(lines), stdout=stdout, stderr=stderr)
    assert repl.run() == 0
    notes = stderr.getvalue()
    assert "forgot the" in notes and "oldest exchange" in notes
    # Every message was answered, and the last exchange is still in the conversation.
    assert stdout.getvalue().count("\n") >= 6
    assert repl.messages[-2]["content"] == "Tell me of the king, question 5."
    assert len(repl.session.tokens) <= engine.n_ctx
