"""Round planning: task counts, shard order and task seeds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler import (
    JobSpec,
    max_tokens_per_task,
    num_tasks_for_round,
    shard_for_task,
    task_seed,
)

SPEC = JobSpec(min_clients=2, max_clients=8)


@pytest.mark.parametrize(
    ("workers", "expected"), [(0, 2), (1, 2), (2, 2), (5, 5), (8, 8), (9, 8), (1000, 8)]
)
def test_one_task_per_worker_within_the_client_limits(workers: int, expected: int) -> None:
    assert num_tasks_for_round(SPEC, workers) == expected


@settings(max_examples=100, deadline=None)
@given(low=st.integers(1, 50), span=st.integers(0, 50), workers=st.integers(0, 200))
def test_task_count_is_always_within_limits(low: int, span: int, workers: int) -> None:
    spec = JobSpec(min_clients=low, max_clients=low + span)
    count = num_tasks_for_round(spec, workers)
    assert spec.min_clients <= count <= spec.max_clients
    if spec.min_clients <= workers <= spec.max_clients:
        assert count == workers


@settings(max_examples=100, deadline=None)
@given(
    num_shards=st.integers(1, 40),
    round_sizes=st.lists(st.integers(1, 12), min_size=1, max_size=20),
)
def test_every_shard_is_used_before_any_repeats(num_shards: int, round_sizes: list[int]) -> None:
    used: list[int] = []
    first_task_number = 0
    for size in round_sizes:
        used += [shard_for_task(first_task_number, i, num_shards) for i in range(size)]
        first_task_number += size
    assert all(0 <= shard < num_shards for shard in used)
    for start in range(len(used)):
        window = used[start : start + num_shards]
        assert len(set(window)) == len(window)


def test_shards_continue_where_the_previous_round_stopped() -> None:
    first_round = [shard_for_task(0, i, 5) for i in range(3)]
    second_round = [shard_for_task(3, i, 5) for i in range(3)]
    assert first_round + second_round == [0, 1, 2, 3, 4, 0]


def test_task_seed_is_stable_across_machines_and_versions() -> None:
    assert task_seed(0, 0, 0) == 728534652295568042
    assert task_seed(42, 3, 7) == 9074879582239003370


def test_task_seeds_are_distinct_across_jobs_rounds_and_tasks() -> None:
    grid = list(itertools.product(range(6), range(12), range(12)))
    seeds = {task_seed(*key) for key in grid}
    assert len(seeds) == len(grid)


def test_task_seed_does_not_confuse_round_and_task_digits() -> None:
    assert task_seed(0, 1, 11) != task_seed(0, 11, 1)
    assert task_seed(1, 1, 1) != task_seed(11, 1, 1) != task_seed(1, 11, 1)


@settings(max_examples=200, deadline=None)
@given(
    job_seed=st.integers(0, 2**63 - 1),
    round_index=st.integers(0, 10**6),
    task_index=st.integers(0, 10**4),
)
def test_task_seed_is_deterministic_and_fits_63_bits(
    job_seed: int, round_index: int, task_index: int
) -> None:
    seed = task_seed(job_seed, round_index, task_index)
    assert seed == task_seed(job_seed, round_index, task_index)
    assert 0 <= seed < 2**63


def test_max_tokens_per_task() -> None:
    spec = JobSpec(inner_steps=20, batch_size=16, seq_len=128)
    assert max_tokens_per_task(spec) == 20 * 16 * 128
