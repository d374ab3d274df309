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
