"""Model families, presets and model config blobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from swarm.models import (
    FAMILIES,
    PRESETS,
    build_model,
    config_from_bytes,
    config_to_bytes,
    count_parameters,
    preset_config,
)
from swarm.models.architectures import MAX_CONFIG_BYTES
from swarm.protocol.errors import ConfigError

_LLAMA_LIKE = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **_LLAMA_LIKE},
    "mistral": {"model_type": "mistral", **_LLAMA_LIKE},
    "qwen2": {"model_type": "qwen2", **_LLAMA_LIKE},
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": 256,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 64,
    },
    "gpt_neox": {
        "model_type": "gpt_neox",
        "vocab_size": 256,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    },
}


def test_every_family_has_a_tiny_test_config() -> None:
    assert set(TINY_CONFIGS) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_each_family_builds_and_runs_a_forward_pass(family: str) -> None:
    model = build_model(TINY_CONFIGS[family], seed=0)
    assert isinstance(model, FAMILIES[family][1])
    assert model.config.use_cache is False
    input_ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits.shape == (2, 8, 256)
    assert torch.isfinite(output.loss)
    # An untrained byte-level model predicts roughly uniformly: loss near ln(256).
    assert 4.0 < output.loss.item() < 7.0


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_family_configs_survive_their_blob(family: str) -> None:
    config = TINY_CONFIGS[family]
    assert config_from_bytes(config_to_bytes(config)) == config


def test_same_seed_builds_the_same_weights_and_another_seed_does_not() -> None:
    first = build_model(TINY_CONFIGS["llama"], seed=1).state_dict()
    again = build_model(TINY_CONFIGS["llama"], seed=1).state_dict()
    other = build_model(TINY_CONFIGS["llama"], seed=2).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_build_model_leaves_the_config_dict_untouched() -> None:
    config = dict(TINY_CONFIGS["gpt2"])
    build_model(config)
    assert config == TINY_CONFIGS["gpt2"]


@pytest.mark.parametrize(
    "config", [{"model_type": "bert", "vocab_size": 256}, {"vocab_size": 256}], ids=str
)
def test_build_model_refuses_unknown_families(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="gpt2, gpt_neox, llama, mistral, qwen2"):
        build_model(config)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_known_families_that_survive_their_blob(name: str) -> None:
    config = preset_config(name)
    assert config["model_type"] in FAMILIES
    assert config_from_bytes(config_to_bytes(config)) == config


def test_micro_llama_preset_is_tiny_and_runs() -> None:
    model = build_model(preset_config("micro-llama"), seed=0)
    assert count_parameters(model) < 100_000
    logits = model(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits
    assert logits.shape == (1, 4, 256)


def test_preset_config_returns_a_copy() -> None:
    config = preset_config("micro-llama")
    config["hidden_size"] = 1
    assert preset_config("micro-llama")["hidden_size"] == 32


def test_unknown_preset_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="micro-llama, tiny-gpt-neox, tiny-gpt2, tiny-llama"):
        preset_config("gpt-5")


def test_config_bytes_are_canonical() -> None:
    config = preset_config("micro-llama")
    reordered = dict(reversed(list(config.items())))
    assert config_to_bytes(config) == config_to_bytes(reordered)
    assert b" " not in config_to_bytes(config)


@pytest.mark.parametrize(
    "data",
    [
        b'{"model_type": "bert"}',
        b'{"model_type": "LLAMA"}',
        b'{"hidden_size": 32}',
        b'{"model_type": null}',
        b'{"model_type": 1}',
        b"[]",
        b'"llama"',
        b"null",
    ],
)
def test_config_blob_of_an_unknown_family_is_refused(data: bytes) -> None:
    with pytest.raises(ConfigError, match="not one this worker builds"):
        config_from_bytes(data)


@pytest.mark.parametrize("data", [b"", b"{", b'{"model_type": "llama",}', b"\xff\xfe\xfd"])
def test_config_blob_that_is_not_json_is_refused(data: bytes) -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_from_bytes(data)


def test_oversize_config_blob_is_refused_before_parsing() -> None:
    config = {"model_type": "llama", "padding": "x" * MAX_CONFIG_BYTES}
    with pytest.raises(ConfigError, match=f"the limit is {MAX_CONFIG_BYTES}"):
        config_from_bytes(json.dumps(config).encode())


def test_config_blob_at_the_size_limit_is_accepted() -> None:
    prefix = b'{"model_type":"llama","padding":"'
    data = prefix + b"x" * (MAX_CONFIG_BYTES - len(prefix) - 2) + b'"}'
    assert len(data) == MAX_CONFIG_BYTES
    assert config_from_bytes(data)["model_type"] == "llama"


@pytest.mark.parametrize("data", [b'{"model_type": []}', b'{"model_type": {"a": 1}}'])
def test_config_blob_with_an_unhashable_model_type_is_refused(data: bytes) -> None:
    with pytest.raises(ConfigError):
        config_from_bytes(data)


def test_deeply_nested_config_blob_is_refused() -> None:
    with pytest.raises(ConfigError):
        config_from_bytes(b"[" * 60_000)


def test_count_parameters_counts_tied_weights_once() -> None:
    tied = build_model({**TINY_CONFIGS["llama"], "tie_word_embeddings": True}, seed=0)
    untied = build_model({**TINY_CONFIGS["llama"], "tie_word_embeddings": False}, seed=0)
    assert count_parameters(untied) - count_parameters(tied) == 256 * 32


def test_count_parameters_skips_frozen_ones_unless_asked() -> None:
    model = build_model(TINY_CONFIGS["llama"], seed=0)
    total = count_parameters(model)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert count_parameters(model) == total - 256 * 32
    assert count_parameters(model, trainable_only=False) == total
