"""Adapters: what LoRA makes trainable on each family, its seeding, merging, and validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from swarm.models.adapters import AdapterConfig, apply_adapter, is_lora, merged_model
from swarm.models.architectures import PRESETS, count_parameters
from swarm.models.params import trainable_state
from swarm.models.sources import load_preset
from swarm.protocol.errors import ConfigError

FAMILY_PRESETS = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gpt2", "tiny-gpt-neox"]
RANK = 2
INPUT = torch.tensor([[1, 72, 101, 108, 108, 111, 10, 33], [1, 66, 121, 101, 10, 0, 7, 200]])


def base(preset: str, seed: int = 0) -> PreTrainedModel:
    return load_preset(preset, seed=seed).model


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer but the output head, by module name."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    shapes = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):  # GPT-2 stores its weights transposed
            shapes[name] = (module.weight.shape[0], module.nf)
    return shapes


def adapted_modules(model: torch.nn.Module) -> set[str]:
    """Names (relative to the base model) of the modules that carry a LoRA adapter."""
    names = set()
    for name, _ in model.named_parameters():
        if ".lora_A." in name:
            names.add(name.split(".lora_A.")[0].removeprefix("base_model.model."))
    return names


def lora(model: torch.nn.Module, seed: int = 0, **fields: Any) -> torch.nn.Module:
    return apply_adapter(model, AdapterConfig(rank=RANK, **fields), seed=seed)


# ---- LoRA on each family -------------------------------------------------------------------


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_lora_trains_only_adapters_on_every_linear_layer_but_the_head(preset: str) -> None:
    model = base(preset)
    shapes = linear_shapes(model)
    assert len(shapes) >= 4 * model.config.num_hidden_layers
    adapted = lora(model)
    assert is_lora(adapted)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(shapes)
    assert adapted_modules(adapted) == set(shapes)
    expected = sum(RANK * (fan_in + fan_out) for fan_in, fan_out in shapes.values())
    assert count_parameters(adapted) == expected
    assert count_parameters(adapted, trainable_only=False) > 10 * expected


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_fresh_lora_leaves_the_model_output_unchanged(preset: str) -> None:
    model = base(preset).eval()
    with torch.no_grad():
        before = model(input_ids=INPUT).logits
        adapted = lora(model).eval()
        after = adapted(input_ids=INPUT).logits
    assert torch.equal(before, after)
    state = trainable_state(adapted)
    assert all(not t.any() for n, t in state.items() if ".lora_B." in n)
    assert all(t.abs().sum() > 0 for n, t in state.items() if ".lora_A." in n)


def test_initial_adapter_depends_only_on_its_seed() -> None:
    first = trainable_state(lora(base("micro-llama", seed=0), seed=11))
    # Another base seed and a disturbed global generator do not change the adapter.
    torch.manual_seed(999)
    same = trainable_state(lora(base("micro-llama", seed=1), seed=11))
    other = trainable_state(lora(base("micro-llama", seed=0), seed=12))
    assert first.keys() == same.keys() == other.keys()
    assert all(torch.equal(first[n], same[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first if ".lora_A." in n)


def test_applying_lora_leaves_the_global_generator_alone() -> None:
    model = base("micro-llama")  # building seeds the generator; applying LoRA must not
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    lora(model, seed=11)
    assert torch.equal(torch.rand(4), expected)


def test_target_modules_restrict_which_layers_get_adapters() -> None:
    model = base("tiny-llama")
    adapted = lora(model, target_modules=("q_proj", "v_proj"))
    layers = model.config.num_hidden_layers
    assert adapted_modules(adapted) == {
        f"model.layers.{i}.self_attn.{proj}" for i in range(layers) for proj in ("q_proj", "v_proj")
    }
    hidden, kv = model.config.hidden_size, 2 * model.config.hidden_size // 4  # 2 of 4 kv heads
    assert count_parameters(adapted) == layers * RANK * ((hidden + hidden) + (hidden + kv))


def test_gpt2_target_modules_use_its_own_names() -> None:
    adapted = lora(base("tiny-gpt2"), target_modules=("c_attn",))
    assert adapted_modules(adapted) == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
    }


def test_target_module_the_model_lacks_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot apply LoRA to this model"):
        lora(base("tiny-gpt2"), target_modules=("q_proj",))
    with pytest.raises(ConfigError, match="cannot apply LoRA"):
        lora(base("tiny-llama"), target_modules=("no_such_proj",))


def test_full_fine_tuning_trains_every_weight_of_the_same_model() -> None:
    model = base("tiny-qwen2")
    for param in model.parameters():
        param.requires_grad_(False)
    adapted = apply_adapter(model, AdapterConfig(kind="full"))
    assert adapted is model
    assert not is_lora(adapted)
    assert all(p.requires_grad for p in adapted.parameters())
    assert count_parameters(adapted) == count_parameters(adapted, trainable_only=False)
    assert merged_model(adapted) is adapted


# ---- merging -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_merged_model_reproduces_the_adapted_logits(preset: str) -> None:
    adapted = lora(base(preset), alpha=4.0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        expected = adapted(input_ids=INPUT).logits
        unadapted = base(preset).eval()(input_ids=INPUT).logits
        merged = merged_model(adapted)
        actual = merged(input_ids=INPUT).logits
    assert not is_lora(merged)
    assert isinstance(merged, PreTrainedModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert (expected - unadapted).abs().max() > 1e-3  # the adapters do change the output
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


# ---- AdapterConfig -------------------------------------------------------------------------

BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("kind", "qlora", "adapter must be one of lora, full"),
    ("kind", "LoRA", "adapter must be one of"),
    ("rank", 0, "lora_rank must be a whole number in"),
    ("rank", -4, "lora_rank"),
    ("rank", 4097, "lora_rank"),
    ("rank", 2.0, "lora_rank"),
    ("rank", True, "lora_rank"),
    ("alpha", 0.0, "lora_alpha must be in"),
    ("alpha", -1.0, "lora_alpha"),
    ("alpha", 1e6 + 1, "lora_alpha"),
    ("alpha", float("nan"), "lora_alpha"),
    ("alpha", float("inf"), "lora_alpha"),
    ("dropout", -0.1, "lora_dropout must be in"),
    ("dropout", 1.0, "lora_dropout"),
    ("dropout", float("nan"), "lora_dropout"),
    ("target_modules", ("",), "lora target module"),
    ("target_modules", ("q_proj", "v proj"), "lora target module 'v proj'"),
    ("target_modules", ("layers/0",), "lora target module"),
    ("target_modules", ("q_proj;rm",), "lora target module"),
    ("target_modules", ("x" * 129,), "lora target module"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=repr)
def test_adapter_config_refuses_bad_values_by_name(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        AdapterConfig(**{field: value})


def test_adapter_config_accepts_the_edges_of_its_ranges() -> None:
    AdapterConfig(rank=1, alpha=1e-3, dropout=0.0)
    AdapterConfig(rank=4096, alpha=1e6, dropout=0.99)
    config = AdapterConfig(
        kind="full", target_modules=("model.layers.0.self_attn.q_proj", "x" * 128, "c-fc_2")
    )
    assert config.to_dict() == {
        "kind": "full",
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "target_modules": ["model.layers.0.self_attn.q_proj", "x" * 128, "c-fc_2"],
    }


def test_adapter_config_round_trips_through_its_dict() -> None:
    config = AdapterConfig(rank=4, alpha=8.0, dropout=0.05, target_modules=("q_proj",))
    fields = config.to_dict()
    assert AdapterConfig(**{**fields, "target_modules": tuple(fields["target_modules"])}) == config


def test_every_preset_is_covered() -> None:
    assert set(FAMILY_PRESETS) | {"micro-llama"} == set(PRESETS)
