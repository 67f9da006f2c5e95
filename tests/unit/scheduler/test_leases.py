"""Lease policy: validation, deadlines and who may take a pending task."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.protocol.errors import ConfigError
from swarm.scheduler import LeasePolicy

FIELDS = ["ttl_s", "max_task_s", "solo_wait_s"]


def test_defaults_are_valid() -> None:
    policy = LeasePolicy()
    assert policy.ttl_s <= policy.max_task_s


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [0.0, -1.0, 86_400.5, float("nan"), float("inf")])
def test_out_of_range_durations_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be in \(0, 86400\]"):
        LeasePolicy(**{field: value})


@pytest.mark.parametrize("field", FIELDS)
def test_a_full_day_is_accepted(field: str) -> None:
    values = {"ttl_s": 1.0, "max_task_s": 86_400.0, "solo_wait_s": 1.0, field: 86_400.0}
    assert getattr(LeasePolicy(**values), field) == 86_400.0


def test_ttl_longer_than_max_task_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ttl_s \(60.0\) must not exceed max_task_s \(30.0\)"):
        LeasePolicy(ttl_s=60.0, max_task_s=30.0)


policies = st.builds(
    lambda ttl, extra, solo: LeasePolicy(
        ttl_s=ttl, max_task_s=min(ttl + extra, 86_400.0), solo_wait_s=solo
    ),
    ttl=st.floats(0.001, 3600.0),
    extra=st.floats(0.0, 86_400.0),
    solo=st.floats(0.001, 600.0),
)
times = st.floats(0.0, 2e9)


@settings(max_examples=200, deadline=None)
@given(policy=policies, leased_at=times, elapsed=st.floats(0.0, 200_000.0))
def test_deadline_never_exceeds_the_task_limit(
    policy: LeasePolicy, leased_at: float, elapsed: float
) -> None:
    now = leased_at + elapsed
    deadline = policy.deadline(leased_at, now)
    assert deadline <= leased_at + policy.max_task_s
    assert deadline <= now + policy.ttl_s


@settings(max_examples=200, deadline=None)
@given(policy=policies, leased_at=times, first=st.floats(0.0, 1e5), gap=st.floats(0.0, 1e5))
def test_a_later_heartbeat_never_shortens_the_lease(
    policy: LeasePolicy, leased_at: float, first: float, gap: float
) -> None:
    earlier = policy.deadline(leased_at, leased_at + first)
    later = policy.deadline(leased_at, leased_at + first + gap)
    assert later >= earlier


def test_heartbeats_extend_by_ttl_until_the_task_limit() -> None:
    policy = LeasePolicy(ttl_s=30.0, max_task_s=100.0)
    assert policy.deadline(leased_at=1000.0, now=1000.0) == 1030.0
    assert policy.deadline(leased_at=1000.0, now=1050.0) == 1080.0
    assert policy.deadline(leased_at=1000.0, now=1090.0) == 1100.0
    assert policy.deadline(leased_at=1000.0, now=5000.0) == 1100.0


POLICY = LeasePolicy(solo_wait_s=20.0)


def test_a_worker_new_to_the_round_may_take_a_fresh_task() -> None:
    assert POLICY.may_take(attempts=0, available_since=100.0, now=100.0, worker_in_round=False)


def test_a_worker_already_in_the_round_waits_for_a_fresh_task() -> None:
    assert not POLICY.may_take(attempts=0, available_since=100.0, now=119.9, worker_in_round=True)


def test_a_fresh_task_opens_to_everyone_after_the_solo_wait() -> None:
    assert POLICY.may_take(attempts=0, available_since=100.0, now=120.0, worker_in_round=True)
    assert POLICY.may_take(attempts=0, available_since=100.0, now=500.0, worker_in_round=True)


def test_a_retried_task_is_open_to_everyone_at_once() -> None:
    assert POLICY.may_take(attempts=1, available_since=100.0, now=100.0, worker_in_round=True)


@settings(max_examples=100, deadline=None)
@given(
    attempts=st.integers(0, 10),
    available_since=times,
    waited=st.floats(0.0, 1e5),
    worker_in_round=st.booleans(),
)
def test_only_a_fresh_task_within_the_solo_wait_is_withheld(
    attempts: int, available_since: float, waited: float, worker_in_round: bool
) -> None:
    now = available_since + waited
    withheld = worker_in_round and attempts == 0 and now - available_since < POLICY.solo_wait_s
    allowed = POLICY.may_take(
        attempts=attempts,
        available_since=available_since,
        now=now,
        worker_in_round=worker_in_round,
    )
    assert allowed is (not withheld)
