"""Work sizing: FLOPs of a task, worker speeds, inner steps, expected times and deadlines."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler import JobSpec
from swarm.scheduler.work import (
    BENCHMARK_EFFICIENCY,
    LEASE_ALLOWANCE_S,
    LEASE_SLACK,
    MIN_GRACE_S,
    close_at,
    effective_flops_per_s,
    estimate_job_flops,
    estimate_memory_bytes,
    expected_task_s,
    flops_per_token,
    inner_steps_for,
    lease_limit_s,
    quorum_count,
    reference_speed,
    round_time_left,
    round_timeout_s,
    staleness_weight,
    step_fraction,
    task_flops,
    update_ema,
)

N = 1_000_000
CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}

speeds = st.floats(1e6, 1e15)


# --- FLOPs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "adapter", "kind", "per_param"),
    [
        ("lm", "full", "train", 6),  # forward 2 + activation grads 2 + weight grads 2
        ("sft", "full", "train", 6),
        ("sft", "lora", "train", 4),  # the frozen base has no weight grads
        ("dpo", "lora", "train", 6),  # plus the reference forward
        ("dpo", "full", "train", 8),
        ("lm", "full", "evaluate", 2),
        ("sft", "lora", "evaluate", 2),
        ("sft", "full", "evaluate", 2),
        ("dpo", "lora", "evaluate", 4),
        ("dpo", "full", "evaluate", 4),
    ],
    ids=str,
)
def test_flops_per_token(method: str, adapter: str, kind: str, per_param: int) -> None:
    assert flops_per_token(method=method, adapter=adapter, num_params=N, kind=kind) == (
        per_param * N
    )


def test_task_flops_are_tokens_times_the_recipes_cost_per_token() -> None:
    spec = JobSpec(method="sft", adapter="lora")
    assert task_flops(spec, N, 1000) == 1000 * 4 * N
    assert task_flops(spec, N, 1000, kind="evaluate") == 1000 * 2 * N
    assert task_flops(spec, N, 0) == 0


# --- speeds ------------------------------------------------------------------------------------


def test_a_measured_speed_beats_the_benchmark() -> None:
    assert effective_flops_per_s(3e12, 1e14) == 3e12


def test_without_a_measurement_the_benchmark_is_discounted() -> None:
    assert effective_flops_per_s(None, 1e14) == BENCHMARK_EFFICIENCY * 1e14
    assert effective_flops_per_s(0.0, 1e14) == BENCHMARK_EFFICIENCY * 1e14
    assert BENCHMARK_EFFICIENCY < 1


@pytest.mark.parametrize("benchmark", [0.0, -1.0])
def test_no_measurement_and_no_benchmark_is_unknown(benchmark: float) -> None:
    assert effective_flops_per_s(None, benchmark) is None


def test_reference_speed_is_the_median_of_the_known() -> None:
    assert reference_speed([1.0, None, 3.0, 0.0, 10.0]) == 3.0
    assert reference_speed([1.0, 3.0]) == 2.0
    assert reference_speed(iter([5.0])) == 5.0


@pytest.mark.parametrize("known", [[], [None], [None, 0.0]], ids=str)
def test_reference_speed_without_known_speeds_is_none(known: list[float | None]) -> None:
    assert reference_speed(known) is None


# --- inner steps -------------------------------------------------------------------------------


def test_adaptive_sizing_scales_steps_with_speed() -> None:
    spec = JobSpec(inner_steps=20)
    assert inner_steps_for(spec, 1e12, 1e12) == 20
    assert inner_steps_for(spec, 2e12, 1e12) == 40
    assert inner_steps_for(spec, 0.5e12, 1e12) == 10


def test_adaptive_sizing_stays_in_the_default_range() -> None:
    spec = JobSpec(inner_steps=20)
    assert inner_steps_for(spec, 1e15, 1e12) == 80
    assert inner_steps_for(spec, 1e9, 1e12) == 5


def test_adaptive_sizing_stays_in_an_explicit_range() -> None:
    spec = JobSpec(inner_steps=20, min_inner_steps=15, max_inner_steps=25)
    assert inner_steps_for(spec, 1e15, 1e12) == 25
    assert inner_steps_for(spec, 1e9, 1e12) == 15


def test_fixed_sizing_ignores_speed() -> None:
    spec = JobSpec(inner_steps=20, work_sizing="fixed")
    assert inner_steps_for(spec, 1e15, 1e12) == 20
    assert inner_steps_for(spec, 1e9, 1e12) == 20


@pytest.mark.parametrize(("speed", "reference"), [(None, 1e12), (1e12, None), (None, None)])
def test_unknown_speeds_get_the_jobs_inner_steps(
    speed: float | None, reference: float | None
) -> None:
    assert inner_steps_for(JobSpec(inner_steps=20), speed, reference) == 20


@settings(max_examples=100, deadline=None)
@given(
    inner_steps=st.integers(1, 1000),
    slow=speeds,
    factor=st.floats(1.0, 100.0),
    reference=speeds,
)
def test_adaptive_steps_lie_in_range_and_grow_with_speed(
    inner_steps: int, slow: float, factor: float, reference: float
) -> None:
    spec = JobSpec(inner_steps=inner_steps, warmup_steps=0)
    low, high = spec.inner_steps_range()
    slow_steps = inner_steps_for(spec, slow, reference)
    fast_steps = inner_steps_for(spec, slow * factor, reference)
    assert low <= slow_steps <= fast_steps <= high


# --- times and deadlines -----------------------------------------------------------------------


def test_expected_task_time_is_compute_plus_download() -> None:
    assert expected_task_s(1e12, 1e11) == pytest.approx(10.0)
    assert expected_task_s(
        1e12, 1e11, download_bytes=1_000_000, download_bytes_per_s=1e5
    ) == pytest.approx(20.0)
    assert expected_task_s(1e12, 1e11, download_bytes_per_s=1e5) == pytest.approx(10.0)


def test_expected_task_time_is_unknown_without_a_speed() -> None:
    assert expected_task_s(1e12, None) is None
    assert expected_task_s(1e12, 0.0) is None


def test_expected_task_time_is_unknown_with_a_download_at_an_unknown_rate() -> None:
    assert expected_task_s(1e12, 1e11, download_bytes=1_000_000) is None
    assert expected_task_s(1e12, 1e11, download_bytes=1, download_bytes_per_s=0.0) is None


def test_a_lease_lasts_a_multiple_of_the_expected_time_plus_an_allowance() -> None:
    assert lease_limit_s(10.0, 3600.0) == LEASE_SLACK * 10.0 + LEASE_ALLOWANCE_S
    assert lease_limit_s(10.0, 3600.0) > 10.0


def test_a_lease_of_unknown_length_gets_the_longest_allowed() -> None:
    assert lease_limit_s(None, 3600.0) == 3600.0


@settings(max_examples=100, deadline=None)
@given(expected=st.none() | st.floats(0.0, 1e7), max_task_s=st.floats(1.0, 86_400.0))
def test_a_lease_never_outlives_the_longest_task_allowed(
    expected: float | None, max_task_s: float
) -> None:
    assert lease_limit_s(expected, max_task_s) <= max_task_s


def test_an_explicit_round_timeout_is_used_as_is() -> None:
    spec = JobSpec(round_timeout_s=30.0)
    assert round_timeout_s(spec, 1000.0, 3600.0) == 30.0
    assert round_timeout_s(spec, None, 3600.0) == 30.0


def test_a_derived_round_timeout_is_three_expected_tasks_and_at_least_a_minute() -> None:
    spec = JobSpec()
    assert round_timeout_s(spec, 100.0, 3600.0) == 300.0
    assert round_timeout_s(spec, 1.0, 3600.0) == 60.0
    assert round_timeout_s(spec, 0.0, 3600.0) == 60.0


def test_a_round_of_unknown_task_time_waits_the_longest_task_allowed() -> None:
    assert round_timeout_s(JobSpec(), None, 3600.0) == 3600.0


# --- quorum, staleness, averages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("quorum", "num_tasks", "needed"),
    [(0.5, 0, 0), (0.5, 1, 1), (0.5, 3, 2), (0.5, 4, 2), (0.01, 1, 1), (0.01, 5, 1), (1.0, 7, 7)],
    ids=str,
)
def test_quorum_count(quorum: float, num_tasks: int, needed: int) -> None:
    assert quorum_count(JobSpec(round_quorum=quorum), num_tasks) == needed


@settings(max_examples=100, deadline=None)
@given(quorum=st.floats(0.01, 1.0), num_tasks=st.integers(1, 10_000))
def test_a_quorum_is_at_least_one_task_and_at_most_all_of_them(
    quorum: float, num_tasks: int
) -> None:
    needed = quorum_count(JobSpec(round_quorum=quorum), num_tasks)
    assert 1 <= needed <= num_tasks
    assert needed >= quorum * num_tasks - 1e-6


@pytest.mark.parametrize(("quorum", "num_tasks", "needed"), [(0.28, 25, 7), (0.14, 50, 7)])
def test_a_quorum_that_is_a_whole_number_of_tasks_asks_for_exactly_that(
    quorum: float, num_tasks: int, needed: int
) -> None:
    assert quorum_count(JobSpec(round_quorum=quorum), num_tasks) == needed


def test_an_update_on_time_counts_fully_and_late_ones_less_and_less() -> None:
    weights = [staleness_weight(s) for s in range(10)]
    assert weights[0] == 1.0
    assert weights[1] == 0.5
    assert all(a > b > 0 for a, b in itertools.pairwise(weights))


def test_update_ema() -> None:
    assert update_ema(None, 7.0) == 7.0
    assert update_ema(0.0, 7.0) == 7.0
    assert update_ema(10.0, 20.0) == 15.0
    assert update_ema(10.0, 20.0, alpha=1.0) == 20.0
    assert update_ema(10.0, 20.0, alpha=0.25) == 12.5


@settings(max_examples=60, deadline=None)
@given(previous=speeds, sample=speeds, alpha=st.floats(0.0, 1.0))
def test_the_average_lies_between_the_old_value_and_the_sample(
    previous: float, sample: float, alpha: float
) -> None:
    value = update_ema(previous, sample, alpha)
    assert min(previous, sample) * (1 - 1e-12) <= value <= max(previous, sample) * (1 + 1e-12)


# --- whole-job estimates -----------------------------------------------------------------------


def job_flops(spec: JobSpec, **overrides: Any) -> float:
    values: dict[str, Any] = {
        "num_params": N,
        "tokens_per_sample": 100.0,
        "num_samples": 100,
        "num_heldout": 5,
        "num_train_tasks": 2,
    }
    return estimate_job_flops(spec, **{**values, **overrides})


def test_a_rounds_bound_job_costs_its_rounds_of_tasks_plus_an_evaluation_each() -> None:
    spec = JobSpec(num_rounds=3, inner_steps=2, warmup_steps=0, batch_size=4, eval_examples=10)
    # 3 rounds of 2 tasks of 2 x 4 samples; 4 evaluations of the 5 held-out examples there are.
    train_tokens, eval_tokens = 3 * 2 * 2 * 4 * 100, 4 * 5 * 100
    assert job_flops(spec) == train_tokens * 6 * N + eval_tokens * 2 * N
    assert job_flops(spec, num_samples=10**6) == job_flops(spec)


def test_an_epochs_bound_job_costs_its_epochs_however_many_rounds_it_says() -> None:
    spec = JobSpec(num_epochs=2, inner_steps=2, warmup_steps=0, batch_size=4, eval_examples=3)
    # 200 samples in rounds of 16 is 13 rounds, so 14 evaluations of 3 examples.
    train_tokens, eval_tokens = 2 * 100 * 100, 14 * 3 * 100
    assert job_flops(spec) == train_tokens * 6 * N + eval_tokens * 2 * N
    assert job_flops(spec) == job_flops(JobSpec(**{**spec.to_dict(), "num_rounds": 999}))
    assert job_flops(spec, num_samples=200) > job_flops(spec)


def test_a_job_estimate_with_no_train_tasks_counts_one_per_round() -> None:
    spec = JobSpec(num_rounds=3, inner_steps=2, warmup_steps=0, batch_size=4)
    assert job_flops(spec, num_train_tasks=0) == job_flops(spec, num_train_tasks=1)


def memory(spec: JobSpec, num_params: int = N, num_trainable: int = N) -> int:
    return estimate_memory_bytes(
        spec, num_params=num_params, num_trainable=num_trainable, config=CONFIG
    )


def test_memory_estimate_is_weights_optimizer_and_activations() -> None:
    spec = JobSpec(batch_size=2, seq_len=8)
    activations = 4 * 2 * 8 * (16 * 64 * 2 + 2 * 100)
    assert memory(spec) == 4 * N + 12 * N + activations


def test_memory_estimate_reads_gpt2_style_config_names() -> None:
    gpt2 = {"n_embd": 64, "n_layer": 2, "vocab_size": 100}
    spec = JobSpec()
    assert estimate_memory_bytes(spec, num_params=N, num_trainable=N, config=gpt2) == memory(spec)


def test_memory_grows_with_batch_sequence_and_parameters() -> None:
    base = JobSpec(batch_size=4, seq_len=64)
    assert memory(JobSpec(batch_size=8, seq_len=64)) > memory(base)
    assert memory(JobSpec(batch_size=4, seq_len=128)) > memory(base)
    assert memory(base, num_params=2 * N) > memory(base)
    assert memory(base, num_trainable=2 * N) > memory(base)


def test_full_weight_dpo_needs_a_reference_copy_and_both_sequences() -> None:
    dpo_lora = memory(JobSpec(method="dpo", adapter="lora"), num_trainable=N // 100)
    dpo_full = memory(JobSpec(method="dpo", adapter="full"), num_trainable=N // 100)
    assert dpo_full - dpo_lora == 4 * N
    sft = memory(JobSpec(method="sft", adapter="full"))
    assert memory(JobSpec(method="dpo", adapter="full")) > sft


def test_a_worker_starting_late_in_a_round_gets_the_share_of_steps_left() -> None:
    spec = JobSpec(inner_steps=20)
    assert inner_steps_for(spec, 2e9, 2e9, time_left=0.5) == 10
    assert inner_steps_for(spec, 2e9, 2e9, time_left=0.0) == spec.inner_steps_range()[0]
    assert inner_steps_for(spec, 2e9, 2e9, time_left=1.7) == 20  # never more than a round
    fixed = JobSpec(inner_steps=20, work_sizing="fixed")
    assert inner_steps_for(fixed, 2e9, 2e9, time_left=0.1) == 20


def test_the_round_time_left_is_measured_against_the_previous_round() -> None:
    assert round_time_left(elapsed_s=10.0, round_s=40.0) == 0.75
    assert round_time_left(elapsed_s=80.0, round_s=40.0) == 0.0
    assert round_time_left(elapsed_s=10.0, round_s=None) == 1.0  # round 0: nothing measured


def test_a_round_waits_a_grace_after_its_quorum_but_never_past_its_deadline() -> None:
    spec = JobSpec(round_grace=0.5)
    assert close_at(spec, opened_at=0.0, quorum_at=40.0, deadline_at=1e9) == 60.0
    assert close_at(spec, opened_at=0.0, quorum_at=40.0, deadline_at=50.0) == 50.0
    # A quick quorum still gets the minimum grace: short tasks are noisy.
    assert close_at(spec, opened_at=0.0, quorum_at=1.0, deadline_at=1e9) == 1.0 + MIN_GRACE_S


def test_a_round_takes_the_share_of_a_full_step_its_work_carries() -> None:
    spec = JobSpec(inner_steps=10, batch_size=4, seq_len=16)  # a full task: 40 samples
    full = 3 * 40 * 16.0
    assert step_fraction(spec, tokens=full, num_train_tasks=3, tokens_per_sample=16) == 1.0
    assert step_fraction(spec, tokens=full / 6, num_train_tasks=3, tokens_per_sample=16) == (
        pytest.approx(1 / 6)
    )
    # Faster workers may train more than a nominal round: the step is still one step.
    assert step_fraction(spec, tokens=2 * full, num_train_tasks=3, tokens_per_sample=16) == 1.0
    # Without a size to compare with (a job from before sizes were recorded): a full step.
    assert step_fraction(spec, tokens=5.0, num_train_tasks=3, tokens_per_sample=0.0) == 1.0
