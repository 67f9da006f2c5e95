"""The scheduling fields of a job spec: epochs, work sizing, rounds' quorum and timeout, late
updates, priority and checkpoints."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.protocol.errors import ConfigError
from swarm.scheduler import JobSpec

OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("num_epochs", -1),
    ("num_epochs", 10_001),
    ("num_epochs", True),
    ("min_inner_steps", -1),
    ("max_inner_steps", 100_001),
    ("round_quorum", 0.0),
    ("round_quorum", 1.01),
    ("round_quorum", float("nan")),
    ("round_timeout_s", -1.0),
    ("round_timeout_s", 7 * 86_400.0 + 1),
    ("max_staleness", -1),
    ("max_staleness", 101),
    ("priority", -101),
    ("priority", 101),
    ("priority", "high"),
    ("checkpoint_every", -1),
    ("checkpoint_every", 100_001),
]

AT_THE_LIMITS: list[dict[str, Any]] = [
    {"num_epochs": 10_000},
    {"round_quorum": 0.01},
    {"round_quorum": 1.0},
    {"round_timeout_s": 7 * 86_400.0},
    {"max_staleness": 0},
    {"max_staleness": 100},
    {"priority": -100},
    {"priority": 100},
    {"checkpoint_every": 0},
    {"checkpoint_every": 100_000},
    {"work_sizing": "fixed"},
    {"late_updates": "drop"},
    {"inner_state": "worker"},
]


def test_scheduling_defaults() -> None:
    spec = JobSpec()
    assert not spec.finishes_by_epochs()
    assert spec.work_sizing == "adaptive"
    assert spec.late_updates == "stale"
    assert spec.inner_state == "task"  # stateless tasks unless a job asks for DiLoCo's
    assert (spec.round_quorum, spec.round_timeout_s, spec.priority) == (0.5, 0.0, 0)


def test_a_job_with_epochs_finishes_by_epochs() -> None:
    assert JobSpec(num_epochs=2).finishes_by_epochs()


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE, ids=str)
def test_out_of_range_scheduling_field_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be a number in"):
        JobSpec(**{field: value})


@pytest.mark.parametrize("values", AT_THE_LIMITS, ids=str)
def test_scheduling_values_at_the_limits_are_accepted(values: dict[str, Any]) -> None:
    spec = JobSpec.from_dict(values)
    for name, value in values.items():
        assert getattr(spec, name) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", 1.5), ("num_epochs", 2.0), ("max_staleness", 0.5), ("checkpoint_every", 1.5)],
    ids=str,
)
def test_fractional_counts_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be a whole number"):
        JobSpec(**{field: value})


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("work_sizing", "proportional", "adaptive, fixed"),
        ("work_sizing", "", "adaptive, fixed"),
        ("late_updates", "keep", "stale, drop"),
        ("inner_state", "replica", "task, worker"),
    ],
)
def test_unknown_choices_are_refused_with_the_allowed_ones(
    field: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be one of {allowed}; got '{value}'"):
        JobSpec(**{field: value})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"inner_steps": 20}, (5, 80)),
        ({"inner_steps": 1, "warmup_steps": 0}, (1, 4)),
        ({"inner_steps": 3, "warmup_steps": 0}, (1, 12)),
        ({"inner_steps": 100_000}, (25_000, 100_000)),
        ({"inner_steps": 20, "min_inner_steps": 10, "max_inner_steps": 30}, (10, 30)),
        ({"inner_steps": 20, "min_inner_steps": 20}, (20, 80)),
        ({"inner_steps": 20, "max_inner_steps": 20}, (5, 20)),
    ],
    ids=str,
)
def test_inner_steps_range(values: dict[str, Any], expected: tuple[int, int]) -> None:
    assert JobSpec(**values).inner_steps_range() == expected


@pytest.mark.parametrize(
    ("values", "bounds"),
    [
        ({"min_inner_steps": 25}, "[25, 80]"),
        ({"max_inner_steps": 10}, "[5, 10]"),
        ({"min_inner_steps": 30, "max_inner_steps": 10}, "[30, 10]"),
    ],
    ids=str,
)
def test_inner_steps_outside_their_range_are_refused(values: dict[str, Any], bounds: str) -> None:
    message = f"inner_steps (20) must lie in [min_inner_steps, max_inner_steps] = {bounds}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        JobSpec(inner_steps=20, **values)


@settings(max_examples=60, deadline=None)
@given(inner_steps=st.integers(1, 100_000))
def test_any_inner_steps_lie_in_their_default_range(inner_steps: int) -> None:
    low, high = JobSpec(inner_steps=inner_steps, warmup_steps=0).inner_steps_range()
    assert 1 <= low <= inner_steps <= high <= 100_000


def test_scheduling_fields_survive_a_round_trip() -> None:
    spec = JobSpec(
        num_epochs=3,
        work_sizing="fixed",
        min_inner_steps=10,
        max_inner_steps=40,
        round_quorum=0.75,
        round_timeout_s=120.0,
        late_updates="drop",
        max_staleness=3,
        priority=-7,
        checkpoint_every=5,
    )
    assert JobSpec.from_dict(spec.to_dict()) == spec
