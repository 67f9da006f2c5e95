"""How much work a task is, how long it should take a given worker, and how long to wait.

Compute is counted in FLOPs from tokens and parameters, the way credits are defined: a forward
pass costs about 2 FLOPs per parameter per token; a backward pass costs 2 more for the
activation gradients plus 2 for the weight gradients, which LoRA skips for its frozen base. DPO
adds a forward pass of the reference policy. Workers' speeds are measured in the same unit
(FLOP/s on their accepted tasks), so one number serves every model size.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from swarm.scheduler.jobs import JobSpec

# A matmul benchmark overstates what a training step reaches (memory traffic, attention,
# optimizer, Python): until a worker has finished a task, assume it trains at this share.
BENCHMARK_EFFICIENCY = 0.25
# A lease lasts this many times the expected task time (plus a fixed allowance) before it
# expires even while the worker keeps heartbeating.
LEASE_SLACK = 4.0
LEASE_ALLOWANCE_S = 60.0


def flops_per_token(*, method: str, adapter: str, num_params: int, kind: str = "train") -> float:
    """FLOPs one token costs a `train` or `evaluate` task of this recipe."""
    forward = 2.0 * num_params
    reference = forward if method == "dpo" else 0.0
    if kind == "evaluate":
        return forward + reference
    backward = 2.0 * num_params if adapter == "lora" else 4.0 * num_params
    return forward + backward + reference


def task_flops(spec: JobSpec, num_params: int, tokens: int, kind: str = "train") -> float:
    return tokens * flops_per_token(
        method=spec.method, adapter=spec.adapter, num_params=num_params, kind=kind
    )


def effective_flops_per_s(measured: float | None, benchmark: float) -> float | None:
    """A worker's training speed: measured on its tasks, else guessed from its benchmark."""
    if measured:
        return measured
    return benchmark * BENCHMARK_EFFICIENCY if benchmark > 0 else None


def reference_speed(speeds: Iterable[float | None]) -> float | None:
    """The median of the known speeds: the worker that `inner_steps` is sized for."""
    known = [s for s in speeds if s]
    return statistics.median(known) if known else None


def inner_steps_for(
    spec: JobSpec,
    speed: float | None,
    reference: float | None,
    *,
    time_left: float = 1.0,
) -> int:
    """Inner steps for a worker of `speed` (FLOP/s), so that it finishes with the round.

    The reference worker (the median) trains `inner_steps` in a whole round; a worker twice
    as fast twice as many; and a worker that starts when only `time_left` of the round remains
    (it joined late, restarted, or was finishing a late task) that share of them, so it catches
    up with the round instead of staying a round behind.
    """
    if spec.work_sizing == "fixed" or not speed or not reference:
        return spec.inner_steps
    steps = round(spec.inner_steps * speed / reference * max(0.0, min(1.0, time_left)))
    low, high = spec.inner_steps_range()
    return max(low, min(high, steps))


def round_time_left(*, elapsed_s: float, round_s: float | None) -> float:
    """The share of a round still ahead `elapsed_s` after it opened, for rounds that take
    `round_s` (the job's previous round, as measured; 1.0 when there is none yet)."""
    if not round_s or round_s <= 0:
        return 1.0
    return max(0.0, 1.0 - elapsed_s / round_s)


def expected_task_s(
    flops: float,
    speed: float | None,
    *,
    download_bytes: int = 0,
    download_bytes_per_s: float | None = None,
) -> float | None:
    """Seconds a task should take a worker (compute plus downloads); None if unknown."""
    if not speed:
        return None
    seconds = flops / speed
    if download_bytes:
        if not download_bytes_per_s:
            return None
        seconds += download_bytes / download_bytes_per_s
    return seconds


def lease_limit_s(expected_s: float | None, max_task_s: float) -> float:
    """How long a lease may live at most, heartbeats or not."""
    if expected_s is None:
        return max_task_s
    return min(max_task_s, LEASE_SLACK * expected_s + LEASE_ALLOWANCE_S)


def round_timeout_s(spec: JobSpec, expected_s: float | None, max_task_s: float) -> float:
    """How long a round waits for every train task before it may close at its quorum."""
    if spec.round_timeout_s:
        return spec.round_timeout_s
    if expected_s is None:
        return max_task_s
    return max(60.0, 3.0 * expected_s)


# However quickly a quorum came in, a round waits at least this long for the rest: for short
# tasks, timing noise (an evaluation, a download) is more than a share of the round.
MIN_GRACE_S = 5.0


def close_at(spec: JobSpec, *, opened_at: float, quorum_at: float, deadline_at: float) -> float:
    """When a round whose quorum came in at `quorum_at` stops waiting for the rest."""
    grace = max(MIN_GRACE_S, spec.round_grace * max(0.0, quorum_at - opened_at))
    return min(quorum_at + grace, deadline_at)


def quorum_count(spec: JobSpec, num_train_tasks: int) -> int:
    """Accepted train tasks a round needs before it may close at its deadline."""
    if not num_train_tasks:
        return 0
    # Less a hair, so that a share that is a whole number of tasks (0.28 of 25: 7.000000001
    # in floating point) asks for exactly that many.
    return max(1, math.ceil(spec.round_quorum * num_train_tasks - 1e-9))


def step_fraction(
    spec: JobSpec, *, tokens: float, num_train_tasks: int, tokens_per_sample: float
) -> float:
    """How much of a full outer step a round takes: the tokens its results trained against
    those of a full round (`num_train_tasks` tasks of `inner_steps` batches), at most one.

    The linear scaling rule, applied to outer steps: a round that carries a little work (the
    leftover samples at the end of a job, a round most of whose workers died) moves the model
    a little, and does not let Nesterov momentum take a full step on the strength of it.
    """
    full = num_train_tasks * samples_per_task(spec) * tokens_per_sample
    return 1.0 if full <= 0 else min(1.0, tokens / full)


def staleness_weight(staleness: int) -> float:
    """Weight of a late update, `staleness` versions behind the one it is applied to."""
    return 1.0 / (1.0 + staleness)


def update_ema(previous: float | None, sample: float, alpha: float = 0.5) -> float:
    """A moving average that follows a worker's recent speed."""
    return sample if not previous else (1.0 - alpha) * previous + alpha * sample


def samples_per_task(spec: JobSpec) -> int:
    return spec.inner_steps * spec.batch_size


def estimate_job_flops(
    spec: JobSpec,
    *,
    num_params: int,
    tokens_per_sample: float,
    num_samples: int,
    num_heldout: int,
    num_train_tasks: int,
) -> float:
    """FLOPs the whole job should cost: its training tokens plus one evaluation per round."""
    per_round = max(1, num_train_tasks) * samples_per_task(spec)
    if spec.finishes_by_epochs():
        train_samples = spec.num_epochs * num_samples
        num_rounds = math.ceil(train_samples / per_round)
    else:
        train_samples = spec.num_rounds * per_round
        num_rounds = spec.num_rounds
    eval_samples = (num_rounds + 1) * min(spec.eval_examples, num_heldout)
    return task_flops(spec, num_params, round(train_samples * tokens_per_sample)) + task_flops(
        spec, num_params, round(eval_samples * tokens_per_sample), kind="evaluate"
    )


def estimate_memory_bytes(
    spec: JobSpec, *, num_params: int, num_trainable: int, config: dict[str, Any]
) -> int:
    """Memory one train task needs on a worker, roughly, in bytes (fp32 training).

    Weights, plus gradients and two AdamW moments for the trainable ones, plus a frozen
    reference copy for full-weight DPO, plus activations kept for the backward pass (about 16
    values per hidden unit per token per layer) and the logits.
    """
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    vocab = int(config.get("vocab_size") or 0)
    sequences = spec.batch_size * (2 if spec.method == "dpo" else 1)
    tokens = sequences * spec.seq_len
    weights = 4 * num_params * (2 if spec.method == "dpo" and spec.adapter == "full" else 1)
    optimizer = 12 * num_trainable
    activations = 4 * tokens * (16 * hidden * layers + 2 * vocab)
    return weights + optimizer + activations
