"""Job specs and the job state machine."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.protocol.errors import ConfigError, SchedulingError
from swarm.scheduler import JobSpec, JobStatus, check_job_move

# Values each field must refuse, with companion fields that keep the other checks satisfied.
OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("num_rounds", 0),
    ("num_rounds", 100_001),
    ("inner_steps", 0),
    ("inner_steps", 100_001),
    ("batch_size", 0),
    ("batch_size", 4097),
    ("seq_len", 7),
    ("seq_len", 131_073),
    ("inner_lr", 0.0),
    ("inner_lr", 1.5),
    ("inner_lr", float("nan")),
    ("inner_lr", float("inf")),
    ("weight_decay", -0.01),
    ("weight_decay", 1.01),
    ("max_grad_norm", -1.0),
    ("max_grad_norm", 1e7),
    ("warmup_steps", -1),
    ("outer_lr", 0.0),
    ("outer_lr", 10.5),
    ("outer_momentum", -0.1),
    ("outer_momentum", 1.0),
    ("min_clients", 0),
    ("max_clients", 0),
    ("max_clients", 10_001),
    ("num_shards", 0),
    ("num_shards", 100_001),
    ("heldout_fraction", 0.0),
    ("heldout_fraction", 0.6),
    ("seed", -1),
    ("seed", 2**63),
    ("batch_size", True),
    ("batch_size", "16"),
    ("batch_size", None),
]

# Each field's extreme accepted values (with what the cross-field checks then need).
AT_THE_LIMITS: list[dict[str, Any]] = [
    {"num_rounds": 1},
    {"num_rounds": 100_000},
    {"inner_steps": 100_000, "warmup_steps": 100_000},
    {"inner_steps": 1, "warmup_steps": 0},
    {"batch_size": 1},
    {"batch_size": 4096},
    {"seq_len": 8},
    {"seq_len": 131_072},
    {"inner_lr": 1e-9},
    {"inner_lr": 1.0},
    {"weight_decay": 0.0},
    {"weight_decay": 1.0},
    {"max_grad_norm": 0.0},
    {"outer_momentum": 0.0},
    {"outer_momentum": 0.999},
    {"outer_lr": 10.0},
    {"min_clients": 10_000, "max_clients": 10_000},
    {"min_clients": 1, "max_clients": 1},
    {"num_shards": 1},
    {"heldout_fraction": 0.5},
    {"heldout_fraction": 0.001},
    {"seed": 0},
    {"seed": 2**63 - 1},
]


def test_defaults_are_a_valid_spec() -> None:
    spec = JobSpec()
    assert spec.model == "tiny-llama"
    assert spec.dataset == "builtin:tiny_corpus"


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE, ids=str)
def test_out_of_range_field_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be"):
        JobSpec(**{field: value})


@pytest.mark.parametrize("values", AT_THE_LIMITS, ids=str)
def test_values_at_the_limits_are_accepted(values: dict[str, Any]) -> None:
    spec = JobSpec(**values)
    for name, value in values.items():
        assert getattr(spec, name) == value


def test_warmup_longer_than_the_inner_loop_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"warmup_steps \(21\) must not exceed inner_steps"):
        JobSpec(inner_steps=20, warmup_steps=21)
    assert JobSpec(inner_steps=20, warmup_steps=20).warmup_steps == 20


def test_more_min_clients_than_max_clients_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"min_clients \(5\) must not exceed max_clients \(4\)"):
        JobSpec(min_clients=5, max_clients=4)


def test_from_dict_refuses_unknown_keys_by_name() -> None:
    with pytest.raises(ConfigError, match=r"\['learning_rate', 'n_epochs'\]"):
        JobSpec.from_dict({"n_epochs": 3, "learning_rate": 0.1, "num_rounds": 2})


def test_from_dict_validates_values() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        JobSpec.from_dict({"batch_size": 0})


def test_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        JobSpec().num_rounds = 3  # type: ignore[misc]


@settings(max_examples=50, deadline=None)
@given(
    num_rounds=st.integers(1, 100_000),
    inner_steps=st.integers(1, 1000),
    inner_lr=st.floats(1e-9, 1.0),
    min_clients=st.integers(1, 64),
    seed=st.integers(0, 2**63 - 1),
)
def test_to_dict_and_from_dict_round_trip(
    num_rounds: int, inner_steps: int, inner_lr: float, min_clients: int, seed: int
) -> None:
    spec = JobSpec(
        num_rounds=num_rounds,
        inner_steps=inner_steps,
        warmup_steps=min(4, inner_steps),
        inner_lr=inner_lr,
        min_clients=min_clients,
        seed=seed,
    )
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_rounds", 2.5), ("inner_steps", 20.5), ("batch_size", 1.5), ("seed", 0.5)],
    ids=str,
)
def test_fractional_value_for_an_integer_field_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        JobSpec.from_dict({field: value})


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ConfigError, match="codec"):
        JobSpec.from_dict({"codec": "int3"})


LEGAL_MOVES = {
    JobStatus.VALIDATING_FILES: {JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED},
    JobStatus.QUEUED: {JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED},
    JobStatus.RUNNING: {
        JobStatus.PAUSED,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    },
    JobStatus.PAUSED: {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED},
    JobStatus.SUCCEEDED: set(),
    JobStatus.FAILED: set(),
    JobStatus.CANCELLED: set(),
}
ALL_MOVES = [(current, target) for current in JobStatus for target in JobStatus]


@pytest.mark.parametrize(("current", "target"), ALL_MOVES, ids=lambda s: s.value)
def test_job_moves(current: JobStatus, target: JobStatus) -> None:
    if target in LEGAL_MOVES[current]:
        check_job_move(current, target)
    else:
        with pytest.raises(SchedulingError, match=f"a {current.value} job cannot become"):
            check_job_move(current, target)


@pytest.mark.parametrize("status", list(JobStatus), ids=lambda s: s.value)
def test_terminal_states_are_exactly_those_without_moves(status: JobStatus) -> None:
    assert status.is_terminal == (not LEGAL_MOVES[status])
    if status.is_terminal:
        for target in JobStatus:
            with pytest.raises(SchedulingError):
                check_job_move(status, target)


def test_terminal_states_are_the_openai_ones() -> None:
    terminal = {s.value for s in JobStatus if s.is_terminal}
    assert terminal == {"succeeded", "failed", "cancelled"}


@pytest.mark.parametrize("status", [s for s in JobStatus if not s.is_terminal], ids=str)
def test_a_live_job_can_always_be_cancelled_and_can_still_succeed(status: JobStatus) -> None:
    check_job_move(status, JobStatus.CANCELLED)
    seen, frontier = {status}, deque([status])
    while frontier:
        current = frontier.popleft()
        for target in JobStatus:
            try:
                check_job_move(current, target)
            except SchedulingError:
                continue
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert JobStatus.SUCCEEDED in seen


def test_status_values_are_plain_strings() -> None:
    assert JobStatus("running") is JobStatus.RUNNING
    assert JobStatus.RUNNING == "running"
