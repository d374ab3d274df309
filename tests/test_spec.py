"""The architecture tables (smallmind.models.spec): loaders, random initialisation and the
models' bindings all read them, so they cannot disagree."""
from __future__ import annotations

import math

import numpy as np
import pytest

from smallmind import Engine, ModelConfig
from smallmind.errors import ModelFormatError, UnsupportedModelError
from smallmind.formats.gguf import load_gguf
from smallmind.formats.gguf_writer import gpt2_metadata, write_gguf
from smallmind.models import build_model
from smallmind.models.init import random_tensors
from smallmind.models.spec import check_tensors, layer_specs, tensor_specs

CONFIGS = [
    ModelConfig.seed_small(),
    ModelConfig(arch="gpt2", bias=False, n_ctx=16, n_ctx_train=32),
    ModelConfig(arch="gpt2", tie_embeddings=True),
    ModelConfig(arch="llama", n_kv_head=2, rope_dim=16),
    ModelConfig(arch="llama", tie_embeddings=True),
    ModelConfig(arch="gemma3", n_kv_head=1, head_dim=64, sliding_window=4, sliding_window_pattern=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.arch}-bias{c.bias}-tied{c.tie_embeddings}")
def test_random_weights_are_the_table_and_the_model_binds_them(config):
    tensors = random_tensors(config, seed=1)
    check_tensors(config, tensors)  # nothing missing, misshapen or unknown
    required = [s for s in tensor_specs(config) if s.required]
    assert list(tensors) == [s.name for s in required]
    assert config.n_params() == sum(math.prod(t.shape) for t in tensors.values())
    model = build_model(config, tensors)
    state = model.new_state()
    try:
        logits = model.forward(state, [1, 2, 3]).logits
        assert logits.shape == (config.vocab_size,) and np.isfinite(logits).all()
    finally:
        state.close()


def test_gpt2_biases_follow_config_bias():
    with_bias = {s.name for s in layer_specs(ModelConfig(arch="gpt2", bias=True))}
    without = {s.name for s in layer_specs(ModelConfig(arch="gpt2", bias=False))}
    linear = {"attn_qkv.bias", "attn_output.bias", "ffn_up.bias", "ffn_down.bias"}
    assert with_bias - without == linear
    assert {"attn_norm.bias", "ffn_norm.bias"} <= without  # LayerNorm keeps its bias
    config = ModelConfig(arch="gpt2", bias=False)
    tensors = random_tensors(ModelConfig(arch="gpt2", bias=True))
    with pytest.raises(UnsupportedModelError, match="attn_qkv.bias"):
        check_tensors(config, tensors)


def test_position_rows_are_the_trained_context():
    config = ModelConfig(arch="gpt2", n_ctx=16, n_ctx_train=32)
    shapes = {s.name: s.shape for s in tensor_specs(config)}
    assert shapes["position_embd.weight"] == (32, config.n_embd)
    with pytest.raises(ValueError, match="n_ctx_train"):
        ModelConfig(arch="gpt2", n_ctx=64, n_ctx_train=32)


def test_a_gpt2_file_loads_with_a_shorter_context(tmp_path):
    config = ModelConfig.seed_small()
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "gpt2", gpt2_metadata(config),
               {name: t.data for name, t in random_tensors(config).items()})
    loaded = load_gguf(path, n_ctx=16)
    assert (loaded.config.n_ctx, loaded.config.n_ctx_train) == (16, 64)
    short = Engine.load(path, n_ctx=16)
    full = Engine.load(path)
    ids = [5, 6, 7, 8]
    np.testing.assert_array_equal(short.logits(ids), full.logits(ids))


def test_missing_and_misshapen_tensors_are_named():
    config = ModelConfig(arch="llama")
    tensors = random_tensors(config)
    del tensors["blk.1.ffn_gate.weight"]
    with pytest.raises(ModelFormatError, match="blk.1.ffn_gate.weight"):
        check_tensors(config, tensors)
    tensors = random_tensors(config)
    tensors["output.weight"] = random_tensors(ModelConfig(arch="llama", n_embd=64))["output.weight"]
    with pytest.raises(ModelFormatError, match="output.weight"):
        check_tensors(config, tensors)


def test_rope_dim_is_a_typed_field():
    assert ModelConfig(arch="llama").rope_dim == ModelConfig(arch="llama").head_dim
    with pytest.raises(ValueError, match="rope_dim"):
        ModelConfig(arch="llama", n_embd=128, n_head=4, rope_dim=33)
    config = ModelConfig(arch="llama", rope_dim=8)
    model = build_model(config, random_tensors(config))
    assert all(2 * len(layer.inv_freq_array) == 8 for layer in model.layers)
