"""The DiLoCo outer step: token-weighted averaging of encoded updates and Nesterov SGD."""

from __future__ import annotations

import io
from functools import partial

import pytest
import torch

from swarm.compression import CompressionPolicy, encode_payload
from swarm.coordinator.aggregation import average_payloads, nesterov_step
from swarm.protocol.errors import ConfigError

LOSSLESS = CompressionPolicy(chain="fp32", small_chain="fp32")


def weighted_average(
    updates: list[dict[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """Average in-memory updates through the coordinator's streaming path (lossless codec)."""
    shapes = {
        n: tuple(t.shape) for n, t in (updates[0] if updates else {"w": torch.zeros(1)}).items()
    }
    payloads = [encode_payload(u, LOSSLESS) for u in updates]
    return average_payloads([partial(io.BytesIO, p) for p in payloads], weights, shapes, LOSSLESS)


def make_params(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=generator),
        "b": torch.randn(3, generator=generator),
    }


@pytest.mark.parametrize("num_steps", [1, 3])
def test_nesterov_step_matches_torch_sgd(num_steps: int) -> None:
    lr, momentum = 0.7, 0.9
    params = make_params(0)
    reference = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    optimizer = torch.optim.SGD(reference.values(), lr=lr, momentum=momentum, nesterov=True)
    buffer = None
    for step in range(num_steps):
        pseudo_gradient = make_params(100 + step)
        params, buffer = nesterov_step(params, pseudo_gradient, buffer, lr=lr, momentum=momentum)
        optimizer.zero_grad()
        for name, parameter in reference.items():
            parameter.grad = pseudo_gradient[name].clone()
        optimizer.step()
        for name, parameter in reference.items():
            torch.testing.assert_close(params[name], parameter.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(
                buffer[name], optimizer.state[parameter]["momentum_buffer"], rtol=1e-6, atol=1e-6
            )


def test_nesterov_step_does_not_modify_its_inputs() -> None:
    params, gradient, buffer = make_params(0), make_params(1), make_params(2)
    copies = [{n: t.clone() for n, t in d.items()} for d in (params, gradient, buffer)]
    nesterov_step(params, gradient, buffer, lr=0.7, momentum=0.9)
    for original, copy in zip((params, gradient, buffer), copies, strict=True):
        for name in original:
            assert torch.equal(original[name], copy[name])


def test_nesterov_step_with_zero_momentum_is_plain_sgd() -> None:
    params, gradient = make_params(0), make_params(1)
    new_params, _ = nesterov_step(params, gradient, None, lr=0.5, momentum=0.0)
    for name in params:
        torch.testing.assert_close(new_params[name], params[name] - 0.5 * gradient[name])


def test_weighted_average_weights_by_tokens() -> None:
    a = {"w": torch.full((2, 2), 1.0), "b": torch.tensor([0.0, 4.0])}
    b = {"w": torch.full((2, 2), 4.0), "b": torch.tensor([8.0, 0.0])}
    average = weighted_average([a, b], [300.0, 100.0])
    torch.testing.assert_close(average["w"], torch.full((2, 2), 1.75))
    torch.testing.assert_close(average["b"], torch.tensor([2.0, 3.0]))


def test_weighted_average_of_one_update_is_that_update() -> None:
    update = make_params(3)
    average = weighted_average([update], [7.0])
    for name in update:
        torch.testing.assert_close(average[name], update[name])


def test_weighted_average_ignores_a_zero_weight_update() -> None:
    a, b = make_params(4), make_params(5)
    average = weighted_average([a, b], [0.0, 2.0])
    for name in a:
        torch.testing.assert_close(average[name], b[name])


@pytest.mark.parametrize("weights", [[0.0, 0.0], [0, 0]])
def test_weighted_average_rejects_weights_summing_to_zero(weights: list[float]) -> None:
    with pytest.raises(ConfigError, match="zero"):
        weighted_average([make_params(0), make_params(1)], weights)


@pytest.mark.parametrize(
    ("num_updates", "weights"), [(2, [1.0]), (1, [1.0, 2.0]), (0, []), (0, [1.0])]
)
def test_weighted_average_rejects_mismatched_weights(
    num_updates: int, weights: list[float]
) -> None:
    updates = [make_params(i) for i in range(num_updates)]
    with pytest.raises(ConfigError, match="one weight per update"):
        weighted_average(updates, weights)


def test_a_larger_total_discounts_the_updates_instead_of_renormalizing_them() -> None:
    fresh, late = {"w": torch.full((2,), 1.0)}, {"w": torch.full((2,), 3.0)}
    payloads = [encode_payload(u, LOSSLESS) for u in (fresh, late)]
    sources = [partial(io.BytesIO, p) for p in payloads]
    shapes = {"w": (2,)}
    # 100 tokens each; the late one counts for half, and the total stays 200 tokens.
    average = average_payloads(sources, [100.0, 50.0], shapes, LOSSLESS, total=200.0)
    torch.testing.assert_close(average["w"], torch.full((2,), (100 * 1.0 + 50 * 3.0) / 200))
    # A round whose only result is late takes half a step, not a whole one.
    (alone,) = [partial(io.BytesIO, payloads[1])]
    half = average_payloads([alone], [50.0], shapes, LOSSLESS, total=100.0)
    torch.testing.assert_close(half["w"], torch.full((2,), 1.5))
