"""The outer step of a DiLoCo round: average pseudo-gradients, then Nesterov SGD.

With pseudo-gradient g (start minus end of the inner loop, averaged over workers, weighted by
tokens), momentum buffer b and learning rate lr:

    b <- momentum * b + g
    params <- params - lr * (g + momentum * b)

which is PyTorch's SGD with `nesterov=True`, written out so the state is plain tensors that
can be stored as a blob between rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

import torch

from swarm.compression import CompressionPolicy, iter_payload
from swarm.protocol.errors import ConfigError


def average_payloads(
    sources: Sequence[Callable[[], BinaryIO]],
    weights: Sequence[float],
    shapes: Mapping[str, tuple[int, ...]],
    policy: CompressionPolicy,
    *,
    total: float | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted average of encoded updates (for example by tokens), decoded tensor by tensor.

    Each source is a function that opens one update payload. Only the sum and one decoded
    tensor are in memory at once, however many updates a round has. The weighted sum is divided
    by `total` (default: the sum of the weights); a larger total discounts the updates, as
    late ones are (their weight is cut, the total is not).
    """
    if not sources or len(sources) != len(weights):
        raise ConfigError(
            f"need one weight per update, got {len(sources)} updates and {len(weights)} weights"
        )
    total = float(sum(weights)) if total is None else float(total)
    if total <= 0:
        raise ConfigError("the weights of the updates sum to zero")
    average = {name: torch.zeros(shape) for name, shape in shapes.items()}
    for open_source, weight in zip(sources, weights, strict=True):
        with open_source() as source:
            for name, tensor in iter_payload(source, shapes, policy):
                average[name].add_(tensor, alpha=weight / total)
    return average


def nesterov_step(
    params: Mapping[str, torch.Tensor],
    pseudo_gradient: Mapping[str, torch.Tensor],
    momentum_buffer: Mapping[str, torch.Tensor] | None,
    *,
    lr: float,
    momentum: float,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One outer Nesterov SGD step; returns (new params, new momentum buffer)."""
    new_params: dict[str, torch.Tensor] = {}
    new_buffer: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        grad = pseudo_gradient[name]
        previous = momentum_buffer[name] if momentum_buffer is not None else torch.zeros_like(grad)
        buffer = previous * momentum + grad
        new_buffer[name] = buffer
        new_params[name] = value - lr * (grad + momentum * buffer)
    return new_params, new_buffer
