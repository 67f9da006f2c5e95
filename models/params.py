"""Trainable parameters as named tensors, and their safetensors bytes.

Only what a job trains travels between coordinator and workers; tied weights (one tensor
under several names) travel once, under the first name PyTorch reports.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from swarm.protocol.errors import ConfigError


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached float32 copies of the model's trainable parameters, by name."""
    return {
        name: param.detach().to(torch.float32).clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of the trainable parameters, by name."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the model's trainable parameters; names and shapes must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:5]
        extra = sorted(set(state) - set(params))[:5]
        raise ConfigError(
            f"parameters do not match the model: missing {missing}, unexpected {extra}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tuple(state[name].shape) != tuple(param.shape):
                raise ConfigError(
                    f"parameter {name}: shape {tuple(state[name].shape)} != {tuple(param.shape)}"
                )
            param.copy_(state[name])


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize named tensors as safetensors."""
    return save_safetensors({k: v.contiguous() for k, v in state.items()})


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes (never pickle)."""
    try:
        return dict(load_safetensors(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"parameters blob is not valid safetensors: {exc}") from None
