"""The inner loop of a DiLoCo round.

A `train` task runs `InnerLoopConfig.steps` AdamW steps of its objective from the round's
parameters, over the samples of its data shard that the coordinator assigned to it (in that
order, `batch_size` at a time), and returns the pseudo-gradient: start minus end. Everything is
seeded by the task, so an honest recomputation on the same machine is bit-exact.

AdamW starts afresh in every task (with a linear warm-up) unless the caller passes the state a
previous task of the same job left (`InnerLoopResult.optimizer_state`): DiLoCo's replicas keep
their inner optimizer across rounds, and its moment estimates stay valid after an outer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from swarm.models.objectives import Objective
from swarm.models.params import trainable_state
from swarm.protocol.errors import ConfigError


class InnerLoopInterrupted(Exception):
    """The step callback asked the loop to stop (the worker is shutting down)."""


@dataclass(frozen=True, kw_only=True)
class InnerLoopConfig:
    """Hyperparameters of one train task's inner loop."""

    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("steps", self.steps, 1, 100_000)
        _check_range("batch_size", self.batch_size, 1, 4096)
        _check_range("learning_rate", self.learning_rate, 1e-9, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _check_range("warmup_steps", self.warmup_steps, 0, self.steps)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True, kw_only=True)
class InnerLoopResult:
    pseudo_gradient: dict[str, torch.Tensor]
    losses: list[float]
    tokens: int
    compute_s: float
    optimizer_state: dict[str, Any]
    """AdamW's state at the end, to carry into the worker's next task of the job."""


def sample_order(num_samples: int, count: int, seed: int) -> list[int]:
    """`count` sample indices in a seeded shuffled order, each once per pass over the data.

    For runs that pick their own samples (benchmarks, tests); the swarm's tasks get theirs
    from the coordinator.
    """
    if num_samples < 1:
        raise ConfigError("the data has no samples")
    rng = np.random.default_rng(seed)
    passes = [rng.permutation(num_samples) for _ in range(-(-count // num_samples))]
    return np.concatenate(passes)[:count].tolist() if passes else []


def batches_of(samples: Sequence[int], steps: int, batch_size: int) -> list[Sequence[int]]:
    """Split `samples` into `steps` batches of `batch_size` (the last one may be smaller)."""
    if -(-len(samples) // batch_size) != steps:
        raise ConfigError(
            f"{len(samples)} samples make {-(-len(samples) // batch_size)} batches of "
            f"{batch_size}, not the {steps} steps asked for"
        )
    return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]


def run_inner_loop(
    model: torch.nn.Module,
    objective: Objective,
    config: InnerLoopConfig,
    samples: Sequence[int] | None = None,
    on_step: Callable[[int, float], bool] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> InnerLoopResult:
    """Train `model` in place for `config.steps` AdamW steps and return the pseudo-gradient.

    Args:
        model: a causal LM whose trainable parameters hold the round's starting version.
        objective: what to optimize, over the task's data shard.
        config: the inner-loop hyperparameters.
        samples: the sample indices to train on, in order, `config.batch_size` per step (the
            last step may take fewer); None draws `sample_order` from the config's seed.
        on_step: called after each step with (step, loss); returning False stops the loop
            with `InnerLoopInterrupted`.
        optimizer_state: AdamW's state from a previous task of the same job on the same
            trainable parameters; its moments are warm, so there is no warm-up.

    Raises:
        ValueError: `optimizer_state` does not fit the model's trainable parameters.
    """
    if samples is None:
        samples = sample_order(objective.num_samples, config.steps * config.batch_size, config.seed)
    batches = batches_of(samples, config.steps, config.batch_size)
    start = trainable_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )
    warmup_steps = config.warmup_steps
    if optimizer_state is not None:
        mismatch = optimizer_state_mismatch(optimizer_state, model)
        if mismatch:
            raise ValueError(mismatch)
        optimizer.load_state_dict(optimizer_state)
        warmup_steps = 0
    torch.manual_seed(config.seed)  # dropout masks (LoRA dropout, GPT-2's own) are seeded too
    losses: list[float] = []
    num_tokens = 0
    model.train()
    began = time.perf_counter()
    for step, batch in enumerate(batches):
        # Linear warm-up: AdamW's moment estimates start afresh.
        scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * scale
            group["weight_decay"] = config.weight_decay
        loss, tokens = objective.training_loss(model, batch)
        num_tokens += tokens
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at inner step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.item()))
        if on_step is not None and on_step(step, losses[-1]) is False:
            raise InnerLoopInterrupted(f"stopped after {step + 1} of {config.steps} steps")
    model.zero_grad(set_to_none=True)  # no gradient memory held between tasks
    end = trainable_state(model)
    return InnerLoopResult(
        pseudo_gradient={name: start[name] - end[name] for name in start},
        losses=losses,
        tokens=num_tokens,
        compute_s=time.perf_counter() - began,
        optimizer_state=optimizer.state_dict(),
    )


def optimizer_state_mismatch(state: dict[str, Any], model: torch.nn.Module) -> str:
    """Why an AdamW state from `InnerLoopResult.optimizer_state` does not fit the model's
    trainable parameters ("" when it does): another count, or another shape."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = state.get("param_groups", [])
    saved = sum(len(group.get("params", [])) for group in groups)
    if saved != len(params):
        return f"optimizer state for {saved} parameters, the model trains {len(params)}"
    moments = state.get("state", {})
    for index, param in enumerate(params):
        entry = moments.get(index)
        if entry is not None and tuple(entry["exp_avg"].shape) != tuple(param.shape):
            return (
                f"optimizer state of parameter {index} has shape {tuple(entry['exp_avg'].shape)},"
                f" the model's is {tuple(param.shape)}"
            )
    return ""
