"""Model families a worker may build, and the tiny presets used by the demo and the tests.

A model travels as a JSON config naming its `model_type`; a worker builds it only if that type
is in `FAMILIES`, through the transformers model class, never remote code.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from swarm.protocol.errors import ConfigError

FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM),
}

MAX_CONFIG_BYTES = 64 * 1024

# Random-init models of each family, for the tests and the text demo: name -> config fields.
# Byte-level vocabulary (chat jobs widen it to the byte chat tokenizer's 259).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    "tiny-mistral": {
        "model_type": "mistral",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
    "tiny-qwen2": {
        "model_type": "qwen2",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    "tiny-gpt2": {
        "model_type": "gpt2",
        "vocab_size": 256,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 512,
    },
    "tiny-gpt-neox": {
        "model_type": "gpt_neox",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
    "micro-llama": {
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    },
}


def preset_config(name: str) -> dict[str, Any]:
    """The config dict of a named preset."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def config_to_bytes(config: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of a model config (the content of its blob)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def config_from_bytes(data: bytes) -> dict[str, Any]:
    """Parse and check a model config blob; only known families are accepted."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"model config is {len(data)} bytes; the limit is {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge integers, deep nesting
        raise ConfigError(f"model config is not valid JSON: {exc!r:.200}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r:.80} is "
            f"not one this worker builds; known: {', '.join(sorted(FAMILIES))}"
        )
    return config


def build_model(config: dict[str, Any], seed: int | None = None) -> PreTrainedModel:
    """Build a randomly initialised causal LM of a known family from its config dict."""
    fields = dict(config)
    family = fields.pop("model_type", None)
    if family not in FAMILIES:
        raise ConfigError(
            f"model_type {family!r} is not supported; known: {', '.join(sorted(FAMILIES))}"
        )
    config_cls, model_cls = FAMILIES[family]
    if seed is not None:
        torch.manual_seed(seed)
    model = model_cls(config_cls(**fields))
    model.config.use_cache = False
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
