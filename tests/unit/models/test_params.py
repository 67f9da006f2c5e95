"""Trainable parameters as named tensors and their safetensors bytes."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedModel

from swarm.models import (
    build_model,
    load_trainable_state,
    parameter_shapes,
    preset_config,
    state_from_bytes,
    state_to_bytes,
    trainable_state,
)
from swarm.protocol.errors import ConfigError


def _model(seed: int = 0) -> PreTrainedModel:
    return build_model(preset_config("micro-llama"), seed=seed)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_trainable_state_is_a_float32_copy() -> None:
    model = _model()
    state = trainable_state(model)
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in state.values())
    name = next(iter(state))
    state[name].add_(1.0)
    assert not torch.equal(dict(model.named_parameters())[name], state[name])


def test_tied_weights_travel_once() -> None:
    state = trainable_state(_model())
    assert "model.embed_tokens.weight" in state
    assert "lm_head.weight" not in state


def test_frozen_parameters_do_not_travel() -> None:
    model = _model()
    model.get_input_embeddings().weight.requires_grad_(False)
    assert "model.embed_tokens.weight" not in trainable_state(model)
    assert "model.embed_tokens.weight" not in parameter_shapes(model)


def test_parameter_shapes_match_the_state() -> None:
    model = _model()
    shapes = parameter_shapes(model)
    assert shapes == {n: tuple(t.shape) for n, t in trainable_state(model).items()}


def test_model_state_round_trips_through_bytes_into_another_model() -> None:
    source, target = _model(seed=0), _model(seed=1)
    state = trainable_state(source)
    assert not _equal(state, trainable_state(target))
    load_trainable_state(target, state_from_bytes(state_to_bytes(state)))
    assert _equal(trainable_state(target), state)
    tokens = torch.arange(16).reshape(2, 8)
    assert torch.equal(source(input_ids=tokens).logits, target(input_ids=tokens).logits)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.dictionaries(
        st.text(alphabet="abcxyz._0123456789", min_size=1, max_size=12),
        st.lists(st.integers(0, 5), max_size=3).map(tuple),
        max_size=5,
    ),
    seed=st.integers(0, 1000),
)
def test_arbitrary_states_round_trip_exactly(shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    assert _equal(state_from_bytes(state_to_bytes(state)), state)


def test_non_contiguous_tensors_serialize_by_value() -> None:
    matrix = torch.arange(6.0).reshape(2, 3).t()
    assert torch.equal(state_from_bytes(state_to_bytes({"m": matrix}))["m"], matrix)


def test_load_refuses_missing_parameters_by_name() -> None:
    model = _model()
    state = trainable_state(model)
    del state["model.norm.weight"]
    with pytest.raises(ConfigError, match=r"missing \['model.norm.weight'\], unexpected \[\]"):
        load_trainable_state(model, state)


def test_load_refuses_extra_parameters_by_name() -> None:
    model = _model()
    state = {**trainable_state(model), "lm_head.weight": torch.zeros(256, 32)}
    with pytest.raises(ConfigError, match=r"unexpected \['lm_head.weight'\]"):
        load_trainable_state(model, state)


def test_load_refuses_wrong_shapes_by_name() -> None:
    model = _model()
    state = trainable_state(model)
    state["model.norm.weight"] = torch.zeros(33)
    with pytest.raises(ConfigError, match=r"model.norm.weight: shape \(33,\) != \(32,\)"):
        load_trainable_state(model, state)


def test_load_refuses_a_transposed_matrix() -> None:
    model = _model()
    state = trainable_state(model)
    name = "model.layers.0.mlp.down_proj.weight"
    state[name] = state[name].t().contiguous()
    with pytest.raises(ConfigError, match=name):
        load_trainable_state(model, state)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\x00" * 8, b"\xff" * 16, b"\x02\x00\x00\x00\x00\x00\x00\x00[]"],
    ids=["empty", "text", "zero-header", "huge-header", "non-object-header"],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ConfigError, match="not valid safetensors"):
        state_from_bytes(data)


def test_truncated_blob_is_refused() -> None:
    data = state_to_bytes(trainable_state(_model()))
    with pytest.raises(ConfigError, match="not valid safetensors"):
        state_from_bytes(data[:-1])


def test_pickle_is_never_loaded() -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    with pytest.raises(ConfigError):
        state_from_bytes(buffer.getvalue())


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=128) | st.just(os.urandom(64)))
def test_random_bytes_only_ever_raise_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        state_from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupted_headers_only_ever_raise_config_error(index: int, value: int) -> None:
    data = bytearray(state_to_bytes({"a": torch.ones(3), "b": torch.zeros(2, 2)}))
    data[index % len(data)] = value
    with contextlib.suppress(ConfigError):
        state_from_bytes(bytes(data))
